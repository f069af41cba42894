"""Run with QGIS's own Python (Debian's /usr/bin/python3 with python3-qgis), not the project's venv:
the tests of ``test_qgis_plugin.py`` drive the plugin through QGIS's API here.

    python3 in_qgis.py cancel-local SCENE OUT          cancel once hbdnet reports progress
    python3 in_qgis.py cancel-server SCENE OUT URL KEY  the key from QGIS's authentication database
    python3 in_qgis.py screenshots SCENE BRIDGES DIR    the algorithm's dialog and the result (needs a display)

Each prints one JSON line of what happened.
"""

import json
import os
import sys
import threading
import time

from qgis.core import QgsApplication, QgsProcessingFeedback

sys.path.insert(0, os.environ["QGIS_PLUGINPATH"])
PROVIDER = None


def start(gui=False):
    app = QgsApplication([], gui)
    app.initQgis()
    sys.path.append(os.path.join(QgsApplication.pkgDataPath(), "python", "plugins"))  # Processing's own
    from processing.core.Processing import Processing

    Processing.initialize()
    from hbdnet_qgis.provider import HbdnetProvider

    global PROVIDER  # the registry does not keep the Python object alive
    PROVIDER = HbdnetProvider()
    QgsApplication.processingRegistry().addProvider(PROVIDER)
    return app


def hbdnet_pid(output):
    """The process running ``hbdnet detect ... -o output``, found in /proc (None when there is none)."""
    for entry in os.listdir("/proc"):
        try:
            argv = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0") if entry.isdigit() else []
        except OSError:
            continue
        if b"detect" in argv and output.encode() in argv:
            return int(entry)
    return None


def cancel_when_running(feedback, output=None):
    """Cancel once the run reports progress; ``seen["pid"]``: the hbdnet process then running."""
    seen = {}

    def watch():
        while feedback.progress() <= 0:
            time.sleep(0.05)
        if output is not None:
            seen["pid"] = hbdnet_pid(output)
        feedback.cancel()

    threading.Thread(target=watch, daemon=True).start()
    return seen


def run_cancelled(algorithm, parameters):
    import processing
    from qgis.core import QgsProcessingException

    feedback = QgsProcessingFeedback()
    seen = cancel_when_running(feedback, parameters["OUTPUT"] if algorithm.endswith("local") else None)
    t = time.monotonic()
    try:
        processing.run(algorithm, parameters, feedback=feedback)
        error = None
    except QgsProcessingException as exc:
        error = str(exc)
    return {"error": error, "seconds": time.monotonic() - t, "progress": feedback.progress(), **seen}


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is not running
        return f.read().split()[2] != "Z"


def main():
    command, *args = sys.argv[1:]
    app = start(gui=command == "screenshots")  # noqa: F841 - QGIS ends when its application object goes
    if command == "cancel-local":
        result = run_cancelled("hbdnet:detectbridgeslocal", {"INPUT": args[0], "OUTPUT": args[1]})
        time.sleep(0.5)
        result["alive"] = result.get("pid") is not None and alive(result["pid"])
    elif command == "cancel-server":
        from qgis.core import QgsAuthMethodConfig

        auth = QgsApplication.authManager()
        auth.setMasterPassword("test-master-password", True)
        config = QgsAuthMethodConfig("Basic")
        config.setName("hbdnet test server")
        config.setConfig("username", "hbdnet")
        config.setConfig("password", args[3])
        assert auth.storeAuthenticationConfig(config)[0]
        result = run_cancelled("hbdnet:detectbridgesserver",
                               {"INPUT": args[0], "OUTPUT": args[1], "SERVER": args[2], "AUTH": config.id()})
    elif command == "screenshots":
        result = screenshots(*args)
    print(json.dumps(result))


def screenshots(scene, bridges, folder):
    from processing.gui.AlgorithmDialog import AlgorithmDialog
    from qgis.core import QgsMapRendererParallelJob, QgsMapSettings, QgsProject, QgsRasterLayer, QgsVectorLayer
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    raster = QgsRasterLayer(scene, "autzen_willamette_footbridge_0.30m")
    QgsProject.instance().addMapLayer(raster)  # the dialog offers the project's rasters
    algorithm = QgsApplication.processingRegistry().algorithmById("hbdnet:detectbridgeslocal")
    dialog = AlgorithmDialog(algorithm.create())
    dialog.resize(900, 700)
    dialog.show()
    for _ in range(20):
        QgsApplication.processEvents()
        time.sleep(0.05)
    dialog_png = os.path.join(folder, "qgis-dialog.png")
    dialog.grab().save(dialog_png)

    layer = QgsVectorLayer(bridges, "bridges", "ogr")  # its style, from the GeoPackage, comes with it
    settings = QgsMapSettings()
    settings.setLayers([layer, raster])
    settings.setDestinationCrs(raster.crs())
    settings.setExtent(layer.extent().buffered(120))
    settings.setOutputSize(QSize(700, 700))
    settings.setBackgroundColor(QColor("white"))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    map_png = os.path.join(folder, "qgis-result.png")
    job.renderedImage().save(map_png)
    symbol = layer.renderer().symbol() if layer.renderer() else None
    return {"dialog": dialog_png, "map": map_png, "features": layer.featureCount(),
            "outline": symbol.symbolLayer(0).strokeColor().name() if symbol else None}


if __name__ == "__main__":
    main()
