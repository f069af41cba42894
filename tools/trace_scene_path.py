"""The files of ``serving/`` (and ``hbdnet/inference.py``) that one ``hbdnet`` command visits, from the
subcommand's ``run`` to its end: how many, how many distinct caller-file -> callee-file steps, and how
many of those steps go back into a file already visited, then each step (caller file -> callee file,
how many calls) and each file. A measure of how far a reader has to follow
one scene through the code.

    python tools/trace_scene_path.py detect samples/rotterdam_pan1_0.5m.tif -o /tmp/r.gpkg -q

Every Python function call is traced (``sys.setprofile`` in every thread), so the command runs several
times slower than usual; module-level code (imports) is not counted.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]


def project_file(filename: str) -> str | None:
    """``filename`` relative to the repository when it is on the scene path's side of the code."""
    path = Path(os.path.abspath(filename))
    if ROOT not in path.parents:
        return None
    rel = path.relative_to(ROOT).as_posix()
    return rel if rel.startswith("serving/") or rel == "hbdnet/inference.py" else None


def main(argv: list[str]) -> int:
    from serving.cli.main import main as hbdnet

    files: dict[str, int] = {}
    steps: dict[tuple[str, str], int] = {}
    started = False

    def profile(frame: FrameType, event: str, arg: object) -> None:
        nonlocal started
        if event != "call" or frame.f_code.co_name == "<module>":
            return
        callee = project_file(frame.f_code.co_filename)
        if callee is None:
            return
        if not started:
            if frame.f_code.co_name != "run":  # the subcommand's run(args): the scene path starts there
                return
            started = True
        files[callee] = files.get(callee, 0) + 1
        back = frame.f_back
        while back is not None and project_file(back.f_code.co_filename) is None:
            back = back.f_back
        caller = project_file(back.f_code.co_filename) if back is not None else "<entry>"
        if caller != callee:
            steps[(caller, callee)] = steps.get((caller, callee), 0) + 1

    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        code = hbdnet(argv)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    seen: set[str] = set()
    back_into = 0
    for caller, callee in steps:  # first-seen order
        back_into += callee in seen
        seen.update((caller, callee))
    print(f"files: {len(files)}, distinct file steps: {len(steps)}, steps back into a file already visited: "
          f"{back_into}", file=sys.stderr)
    for (caller, callee), n in steps.items():
        print(f"  step {caller} -> {callee} x{n}", file=sys.stderr)
    for name in files:
        print(f"  {name}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
