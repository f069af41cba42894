"""The QGIS plugin (``qgis/hbdnet_qgis``) in Debian's QGIS 3.22, headless: the zip that
``tools/build_qgis_plugin.py`` builds installs and its tools list in ``qgis_process``; the local tool
finds the Autzen footbridge (the GeoPackage with its style), the server tool against a real ``hbdnet
serve`` the same feature; an area of interest; Cancel stops hbdnet or cancels the server's job; a
missing hbdnet, a refused key and an unreachable server are one readable line each.

QGIS runs its own Python (``/usr/bin/python3`` with python3-qgis), so these tests run QGIS as a
subprocess with a clean environment (the venv's Python must not leak into it) and hand it the venv's
``hbdnet`` through ``HBDNET_EXECUTABLE``. ``.ci/run`` installs QGIS when it is missing; without it
these tests skip, saying so. ``HBDNET_SCREENSHOTS=DIR`` keeps the dialog and map screenshots.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from serving.testing.servers import free_port, wait_ready

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "autzen_willamette_footbridge_0.30m.tif"
IN_QGIS = Path(__file__).with_name("in_qgis.py")
HBDNET = Path(sys.executable).with_name("hbdnet")
KEY = "qgis-plugin-test-key-0123456789"
SYSTEM_PYTHON = "/usr/bin/python3"


def qgis_process() -> str | None:
    # Debian's qgis_process wrapper adds --noversioncheck, which qgis_process 3.22 itself refuses.
    return shutil.which("qgis_process.bin") or shutil.which("qgis_process")


@pytest.fixture(scope="module")
def qgis(tmp_path_factory):
    """A clean environment for QGIS with the plugin installed from its zip."""
    exe = qgis_process()
    if exe is None:
        pytest.skip("no QGIS on this machine (apt-get install qgis python3-qgis; .ci/run installs it)")
    if subprocess.run([SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True, check=False).returncode:
        pytest.skip("QGIS's Python bindings are missing (apt-get install python3-qgis)")
    root = tmp_path_factory.mktemp("qgis")
    sys.path.insert(0, str(REPO / "tools"))
    try:
        from build_qgis_plugin import build
    finally:
        sys.path.remove(str(REPO / "tools"))
    with zipfile.ZipFile(build(root / "dist")) as zf:
        zf.extractall(root / "plugins")
    runtime = root / "runtime"
    runtime.mkdir(mode=0o700)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(root / "home"), "XDG_RUNTIME_DIR": str(runtime),
           "QT_QPA_PLATFORM": "offscreen", "QGIS_PLUGINPATH": str(root / "plugins"),
           "HBDNET_EXECUTABLE": str(HBDNET), "LANG": "C.UTF-8"}
    (root / "home").mkdir()
    # QGIS writes statistics beside the rasters it opens (.aux.xml): the tests use a copy of the sample
    shutil.copy(SAMPLE, root / SAMPLE.name)
    out = subprocess.run([exe, "plugins", "enable", "hbdnet_qgis"], env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return {"exe": exe, "env": env, "root": root, "autzen": root / SAMPLE.name}


def run_tool(qgis, algorithm: str, *params: str, env: dict | None = None, timeout: float = 300):
    # after "--", qgis_process 3.22 takes NAME=VALUE
    params = tuple(p.removeprefix("--") for p in params)
    return subprocess.run([qgis["exe"], "run", f"hbdnet:{algorithm}", "--", *params], env=env or qgis["env"],
                          capture_output=True, text=True, timeout=timeout, check=False)


def in_qgis(qgis, *args: str, env: dict | None = None) -> dict:
    out = subprocess.run([SYSTEM_PYTHON, str(IN_QGIS), *args], env=env or qgis["env"], capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def features(uri: str) -> list[dict]:
    import pyogrio

    path, _, layer = uri.partition("|layername=")
    meta, _, geometry, fields = pyogrio.raw.read(path, layer=layer or None)
    names = list(meta["fields"])
    return [{"wkb": geometry[i], **{n: fields[j][i] for j, n in enumerate(names)}} for i in range(len(geometry))]


def result_uri(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # the last: the inputs are echoed first, OUTPUT among them
    line = [line for line in out.stdout.splitlines() if line.startswith("OUTPUT:")][-1]
    return line.split("\t", 1)[1].strip() if "\t" in line else line.split(":", 1)[1].strip()


def on_the_footbridge(feature: dict) -> bool:
    # samples/README.md: the footbridge's centre is at scene pixel (945, 3450)
    return abs(feature["cx_px"] - 945) < 80 and abs(feature["cy_px"] - 3450) < 80


@pytest.fixture(scope="module")
def local_result(qgis) -> str:
    out = run_tool(qgis, "detectbridgeslocal", f"--INPUT={qgis['autzen']}", f"--OUTPUT={qgis['root'] / 'autzen.gpkg'}")
    return result_uri(out)


def test_the_zip_installs_and_its_tools_are_listed(qgis):
    out = subprocess.run([qgis["exe"], "list"], env=qgis["env"], capture_output=True, text=True, timeout=120,
                         check=False)
    assert "hbdnet:detectbridgeslocal" in out.stdout and "hbdnet:detectbridgesserver" in out.stdout
    assert "hbdnet:finetunemodellocal" in out.stdout
    with zipfile.ZipFile(next((qgis["root"] / "dist").glob("hbdnet_qgis-*.zip"))) as zf:
        names = set(zf.namelist())
    assert {"hbdnet_qgis/metadata.txt", "hbdnet_qgis/__init__.py", "hbdnet_qgis/LICENSE",
            "hbdnet_qgis/icon.svg"} <= names


def test_the_local_tool_finds_the_footbridge_and_writes_its_style(local_result):
    path, _, layer = local_result.partition("|layername=")
    assert layer == "autzen"
    (feature,) = features(local_result)
    assert on_the_footbridge(feature)
    with sqlite3.connect(path) as db:
        styles = db.execute("SELECT f_table_name, useAsDefault, styleQML FROM layer_styles").fetchall()
    assert [(t, d) for t, d, _ in styles] == [("autzen", 1)] and "255,69,0" in styles[0][2]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    data = tmp_path_factory.mktemp("serve")
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen([str(HBDNET), "serve", "--data-dir", str(data), "--port", str(port), "--workers", "0",
                             "--api-key", KEY, "--device", "cpu"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc)
    yield url
    proc.terminate()
    proc.wait(timeout=60)


def test_the_server_tool_gives_the_same_feature(qgis, server, local_result):
    env = dict(qgis["env"], HBDNET_API_KEY=KEY)
    out = run_tool(qgis, "detectbridgesserver", f"--INPUT={qgis['autzen']}", f"--SERVER={server}",
                   f"--OUTPUT={qgis['root'] / 'served.gpkg'}", env=env)
    uri = result_uri(out)
    assert "uploading autzen_willamette_footbridge_0.30m.tif" in out.stdout
    (served,) = features(uri)
    (local,) = features(local_result)
    import shapely

    assert abs(served["score"] - local["score"]) < 1e-4
    assert shapely.from_wkb(served["wkb"]).equals_exact(shapely.from_wkb(local["wkb"]), 1e-3)
    path = uri.partition("|layername=")[0]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM layer_styles WHERE useAsDefault = 1").fetchone()[0] == 1


def test_an_area_of_interest_limits_the_search(qgis, tmp_path):
    import rasterio

    with rasterio.open(qgis["autzen"]) as ds:
        b, crs = ds.bounds, ds.crs.to_string()
    middle = (b.bottom + b.top) / 2
    out = run_tool(qgis, "detectbridgeslocal", f"--INPUT={qgis['autzen']}", "--OUTPUT=TEMPORARY_OUTPUT",
                   f"--EXTENT={b.left},{b.right},{middle},{b.top} [{crs}]")
    # the dialog's default output, a temporary GeoPackage (qgis_process deletes it as it exits)
    assert ".gpkg|layername=" in result_uri(out)
    assert "0 bridges found" in out.stdout  # the footbridge is in the south
    south = tmp_path / "south.geojson"
    south.write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
                                 "geometry": {"type": "Polygon", "coordinates": [[
                                     [-123.0753, 44.0500], [-123.0625, 44.0500], [-123.0625, 44.0540],
                                     [-123.0753, 44.0540], [-123.0753, 44.0500]]]}}]}))
    out = run_tool(qgis, "detectbridgeslocal", f"--INPUT={qgis['autzen']}", f"--OUTPUT={tmp_path / 'south.gpkg'}",
                   f"--AOI={south}")
    (feature,) = features(result_uri(out))
    assert on_the_footbridge(feature)
    plan = next(line for line in out.stdout.splitlines() if "plan:" in line)
    assert "3248 x 4000" not in plan, plan  # the raster was cut to the polygon's box


def test_the_fine_tune_tool_learns_from_the_corrected_layer_and_detect_takes_its_model(qgis, local_result, tmp_path):
    """The loop inside QGIS: the local tool's layer (here left as it is: one footbridge) and its raster
    make a model file, which the local tool then runs."""
    from hbdnet.checkpoint import read_checkpoint

    model = tmp_path / "mine.safetensors"
    out = run_tool(qgis, "finetunemodellocal", f"--SCENES={qgis['autzen']}", f"--LABELS={local_result}",
                   "--EPOCHS=1", f"--OUTPUT={model}")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "1 bridge(s) labelled on 1 scene(s)" in out.stdout and "every scene's whole footprint" in out.stdout
    lineage = read_checkpoint(model)["meta"]["finetune"]
    assert lineage["bridges_trained"] == 1 and str(qgis["autzen"]) in lineage["files"]
    out = run_tool(qgis, "detectbridgeslocal", f"--INPUT={qgis['autzen']}", f"--MODEL={model}",
                   f"--OUTPUT={tmp_path / 'again.gpkg'}")
    assert result_uri(out).startswith(str(tmp_path / "again.gpkg")) and "found in 27 windows" in out.stdout


def one_error_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode != 0
    errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1, out.stdout + out.stderr
    return errors[0]


def test_a_missing_hbdnet_is_one_readable_line(qgis, tmp_path):
    out = run_tool(qgis, "detectbridgeslocal", f"--INPUT={qgis['autzen']}", f"--OUTPUT={tmp_path / 'x.gpkg'}",
                   env=dict(qgis["env"], HBDNET_EXECUTABLE=str(tmp_path / "nowhere" / "hbdnet")))
    line = one_error_line(out)
    assert "hbdnet not found: HBDNET_EXECUTABLE names" in line and "Traceback" not in out.stdout + out.stderr
    env = {k: v for k, v in qgis["env"].items() if k != "HBDNET_EXECUTABLE"}
    line = one_error_line(run_tool(qgis, "detectbridgeslocal", f"--INPUT={qgis['autzen']}",
                                   f"--OUTPUT={tmp_path / 'x.gpkg'}", env=env))
    assert "hbdnet not found: install it" in line


def test_a_refused_key_and_an_unreachable_server_are_one_line_each(qgis, server, tmp_path):
    line = one_error_line(run_tool(qgis, "detectbridgesserver", f"--INPUT={qgis['autzen']}", f"--SERVER={server}",
                                   f"--OUTPUT={tmp_path / 'x.gpkg'}"))
    assert "refused the API key (401)" in line
    closed = free_port()
    line = one_error_line(run_tool(qgis, "detectbridgesserver", f"--INPUT={qgis['autzen']}",
                                   f"--SERVER=http://127.0.0.1:{closed}", f"--OUTPUT={tmp_path / 'x.gpkg'}"))
    assert f"cannot reach the hbdnet server at http://127.0.0.1:{closed}" in line


def test_cancel_stops_the_hbdnet_process(qgis, tmp_path):
    result = in_qgis(qgis, "cancel-local", str(qgis["autzen"]), str(tmp_path / "c.gpkg"))
    assert result["error"] == "cancelled: hbdnet was stopped"
    assert result["pid"] and not result["alive"]
    assert not (tmp_path / "c.gpkg").exists()


def test_cancel_cancels_the_job_on_the_server_and_the_key_comes_from_qgis_auth_database(qgis, server, tmp_path):
    result = in_qgis(qgis, "cancel-server", str(qgis["autzen"]), str(tmp_path / "c.gpkg"), server, KEY)
    assert result["error"].startswith("cancelled: job ") and result["error"].endswith("was cancelled on the server")
    job_id = result["error"].split()[2]
    job = httpx.get(f"{server}/jobs/{job_id}", headers={"X-API-Key": KEY}).json()
    assert job["status"] == "dismissed" and job["owner"] == "admin"


def test_screenshots_of_the_dialog_and_the_result(qgis, local_result, tmp_path):
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        pytest.skip("no xvfb-run (apt-get install xvfb)")
    env = {k: v for k, v in qgis["env"].items() if k != "QT_QPA_PLATFORM"}
    out = subprocess.run([xvfb, "-a", "-s", "-screen 0 1280x1024x24", SYSTEM_PYTHON, str(IN_QGIS), "screenshots",
                          str(qgis["autzen"]), local_result, str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["features"] == 1 and result["outline"] == "#ff4500"  # the style came with the layer
    import rasterio

    for name in ("dialog", "map"):
        with rasterio.open(result[name]) as png:
            pixels = png.read()
        assert pixels.shape[1] > 300 and pixels.std() > 10, name  # a picture, not a blank
    if os.environ.get("HBDNET_SCREENSHOTS"):
        folder = Path(os.environ["HBDNET_SCREENSHOTS"])
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("dialog", "map"):
            shutil.copy(result[name], folder / Path(result[name]).name)
