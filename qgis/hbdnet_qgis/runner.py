"""Finding and running the ``hbdnet`` command: its progress lines become the Processing progress bar,
the Cancel button stops it, and a failure becomes one readable line."""

import os
import queue
import re
import shutil
import subprocess
import threading
import time

from qgis.core import QgsProcessingException

EXECUTABLE_SETTING = "HBDNET_EXECUTABLE"
# detect's --progress-lines, and finetune's line every few iterations (each stage: 0 to 100 %)
PROGRESS = re.compile(r"progress (\d+)/(\d+) windows|\bit (\d+)/(\d+) epoch")


def configured_executable():
    """The path set in Processing's options (empty when unset or outside QGIS's Processing)."""
    try:
        from processing.core.ProcessingConfig import ProcessingConfig
    except ImportError:
        return ""
    return (ProcessingConfig.getSetting(EXECUTABLE_SETTING) or "").strip()


def find_hbdnet():
    """The ``hbdnet`` command: the Processing setting, else ``HBDNET_EXECUTABLE``, else the PATH."""
    for candidate, where in ((configured_executable(), "the Processing setting 'hbdnet executable'"),
                             (os.environ.get("HBDNET_EXECUTABLE", "").strip(), "HBDNET_EXECUTABLE")):
        if candidate:
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
            raise QgsProcessingException(f"hbdnet not found: {where} names {candidate}, which is not an "
                                         "executable file")
    found = shutil.which("hbdnet")
    if found:
        return found
    raise QgsProcessingException(
        "hbdnet not found: install it (pip install hbdnet, in any Python environment) and set its path under "
        "Settings > Options > Processing > Providers > hbdnet, or put it on the PATH")


def run_hbdnet(args, feedback):
    """Run ``hbdnet ARGS`` to the end; raise QgsProcessingException with hbdnet's own error line when it
    fails, or when the user cancels (the process is stopped first). Returns the lines it printed on
    stdout."""
    argv = [find_hbdnet(), *args]
    feedback.pushCommandInfo(" ".join(argv))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # its own process group, so that a cancel stops its workers too
    group = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt"
             else {"start_new_session": True})
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                bufsize=1, env=env, **group)
    except OSError as exc:
        raise QgsProcessingException(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    lines = queue.Queue()
    readers = [threading.Thread(target=_pump, args=(stream, name, lines), daemon=True)
               for stream, name in ((proc.stdout, "out"), (proc.stderr, "err"))]
    for reader in readers:
        reader.start()
    out, err = [], []
    while True:
        if feedback.isCanceled():
            _stop(proc)
            raise QgsProcessingException("cancelled: hbdnet was stopped")
        try:
            name, line = lines.get(timeout=0.1)
        except queue.Empty:
            if proc.poll() is not None and not any(r.is_alive() for r in readers):
                break
            continue
        line = line.rstrip("\n")
        (out if name == "out" else err).append(line)
        match = PROGRESS.search(line)
        if match:
            done, total = (int(g) for g in match.groups() if g is not None)
            feedback.setProgress(100.0 * done / max(1, total))
            if match.group(3) is not None:  # finetune's line also says the loss and the time left
                feedback.pushInfo(line)
        elif line.strip() and not (name == "err" and ": error: " in line):  # an error is raised below
            feedback.pushInfo(line)
    if proc.wait() != 0:
        said = [line for line in err if line.strip() and not PROGRESS.search(line)]
        raise QgsProcessingException(said[-1] if said else f"hbdnet stopped with exit code {proc.returncode}")
    return out


def _pump(stream, name, lines):
    for line in iter(stream.readline, ""):
        lines.put((name, line))
    stream.close()


def _stop(proc):
    """SIGTERM to hbdnet's process group (its workers too), SIGKILL after 10 s (Windows: terminate)."""
    import signal

    for sig, wait in ((signal.SIGTERM, 10.0), (getattr(signal, "SIGKILL", signal.SIGTERM), 5.0)):
        try:
            if os.name == "nt":
                proc.terminate()
            else:
                os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is not None:
            return
