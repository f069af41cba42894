"""The shipped light model on the CPU: where a window's time goes, per pyramid level, and a whole
``hbdnet detect`` of a large scene made of real imagery.

    python tools/bench_cpu.py --profile --size 4096       # the stage table (ms per window, per level), torch and int8
    python tools/bench_cpu.py --detect --size 16384       # the whole command, timed, torch and int8
    python tools/bench_cpu.py --window --yolo-python YOLO_VENV/bin/python   # one window: ours against YOLOv8-OBB

The scene is a mosaic of real images, so that proposals are realistic (a flat or synthetic texture
gives the RPN nothing to propose): 512 px cells cut from the NWPU VHR-10 images the tests use
(bridges, and the bridge-free negatives: harbours, airports, fields; research use, read from
``$HBDNET_SHARED_DATA``, never written anywhere but the cache folder) and from the Autzen sample,
each cell flipped or turned by its index so that a repeated image does not repeat its pixels, in a
tiled JPEG GeoTIFF (0.5 m, EPSG:32631) cached in ``--cache-dir``.

``--profile`` runs the engine's scene path (``serving.detect.detect``, in this process, as
``hbdnet detect`` runs on a machine without a GPU) with the default model, whose detector is built
with timers around the stages (``StageTimer`` of ``tools/bench_window.py``): backbone, FPN, RPN head
convs, proposal NMS, RoIAlign, RoI head FCs, final rotated NMS, and the rest of a detector call
(normalising, anchors, top-k, box decoding). Times are per window, summed over the windows of each
level (level 0 runs the local detector, the others the global one), with the merge and the reads of
the whole scene after them. ``--detect`` times the ``hbdnet detect`` command itself (a subprocess,
from start to written GeoPackage) and prints the windows per level from its plan line. Each mode
runs every ``--runtimes`` one after the other, so their ratio comes from one run.

What else ran on the machine shows in the load averages printed at the start and the end.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning

from bench_window import StageTimer

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HBDNET_SHARED_DATA", ROOT / ".." / "shared" / "data"))
CELL = 512
STAGES = ("backbone", "FPN", "RPN head convs", "ONNX trunk", "proposal NMS", "RoIAlign", "RoI head FCs", "final NMS",
          "rest")


def source_images() -> list[Path]:
    folders = [SHARED / "nwpu-bridges" / "train", SHARED / "nwpu-bridges" / "val", SHARED / "nwpu-negatives"]
    images = sorted(p for f in folders for p in (f / "images").glob("*.jpg"))
    if not images:
        sys.exit(f"bench_cpu: no NWPU images under {SHARED} (set HBDNET_SHARED_DATA; docs/data.md)")
    return images


def cells() -> Iterator[np.ndarray]:
    """512 x 512 RGB cells: the centre of each NWPU image, then tiles of the Autzen sample, round and
    round, each turned or flipped by its index."""
    with rasterio.open(ROOT / "samples" / "autzen_willamette_footbridge_0.30m.tif") as ds:
        autzen = ds.read()
    autzen_cells = [autzen[:, r:r + CELL, c:c + CELL] for r in range(0, autzen.shape[1] - CELL + 1, CELL)
                    for c in range(0, autzen.shape[2] - CELL + 1, CELL)]
    sources = source_images()
    k = 0
    while True:
        for path in sources:
            with warnings.catch_warnings():  # photographs, no georeference
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(path) as src:
                    img = src.read()
            if img.shape[0] != 3:
                continue
            if min(img.shape[1:]) < CELL:
                continue
            r0, c0 = (img.shape[1] - CELL) // 2, (img.shape[2] - CELL) // 2
            yield _vary(img[:, r0:r0 + CELL, c0:c0 + CELL], k)
            k += 1
        for cell in autzen_cells:
            yield _vary(cell, k)
            k += 1


def _vary(cell: np.ndarray, k: int) -> np.ndarray:
    cell = np.rot90(cell, k % 4, axes=(1, 2))
    return np.ascontiguousarray(cell[:, :, ::-1] if (k // 4) % 2 else cell)


def mosaic(size: int, cache: Path) -> Path:
    """The ``size`` x ``size`` mosaic GeoTIFF, written once (a row of cells at a time) and cached."""
    path = cache / f"cpu_mosaic_{size}.tif"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    n = -(-size // CELL)
    source = cells()
    tmp = path.with_suffix(".partial.tif")
    with rasterio.open(tmp, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs="EPSG:32631", transform=Affine(0.5, 0, 500000.0, 0, -0.5, 5800000.0), tiled=True,
                       blockxsize=256, blockysize=256, compress="JPEG", photometric="YCBCR", jpeg_quality=90,
                       BIGTIFF="IF_SAFER") as ds:
        for row in range(n):
            strip = np.concatenate([next(source) for _ in range(n)], axis=2)
            h = min(CELL, size - row * CELL)
            ds.write(strip[:, :h, :size], window=rasterio.windows.Window(0, row * CELL, size, h))
    tmp.rename(path)
    return path


@dataclass
class LevelTimes:
    windows: int = 0
    seconds: dict[str, float] | None = None


def instrumented_spec(levels: dict[int, LevelTimes], runtime: str):
    """The default model's spec, whose detector is built with stage timers; per level, the windows and
    the seconds of each stage are added to ``levels``."""
    import hbdnet.models.roi_heads as roi_module
    import hbdnet.models.rpn as rpn_module
    from serving.engine.detectors import ModelSpec
    from serving.model_ref import resolve_model

    base = resolve_model("default", "cpu").spec

    @dataclass(frozen=True)
    class ProfiledSpec(ModelSpec):
        def build(self):
            detector = super().build()
            model, timer = detector.model, StageTimer()
            stack = contextlib.ExitStack()  # lives as long as the detector: the worker's whole run
            for det in (model.local_detector, *model.global_detectors):
                stack.enter_context(timer.wrap(det.backbone, "forward", "backbone"))
                stack.enter_context(timer.wrap(det.neck, "forward", "FPN"))
                stack.enter_context(timer.wrap(det.rpn_head, "head", "RPN head convs"))
                stack.enter_context(timer.wrap(det.roi_head.bbox_roi_extractor, "forward", "RoIAlign"))
                stack.enter_context(timer.wrap(det.roi_head.bbox_head, "forward", "RoI head FCs"))
                if det.trunk is not None:  # backbone, FPN and RPN head convs in one ONNX Runtime call
                    stack.enter_context(timer.wrap(det, "trunk", "ONNX trunk"))
            stack.enter_context(timer.wrap(rpn_module, "batched_nms_horizontal", "proposal NMS"))
            stack.enter_context(timer.wrap(roi_module, "batched_nms_rotated", "final NMS"))
            detect = model.detect

            def timed_call(images, level, context=None):
                before = dict(timer.times)
                t0 = time.perf_counter()
                out = detect(images, level, context=context)
                total = time.perf_counter() - t0
                spent = {k: timer.times[k] - before.get(k, 0.0) for k in timer.times}
                spent["rest"] = total - sum(spent.values())
                lt = levels.setdefault(level, LevelTimes(0, defaultdict(float)))
                lt.windows += len(images)
                for k, v in spent.items():
                    lt.seconds[k] += v
                return out

            model.detect = timed_call
            detector._profile_patches = stack  # keep the wrappers for the detector's life
            return detector

    return ProfiledSpec(base.path, base.device, base.precision, runtime)


def profile(scene: Path, runtime: str) -> float:
    """Print the stage table of the default model run with ``runtime``; return the wall seconds."""
    from serving.detect import DetectOptions, detect
    from serving.engine.pools import PoolConfig
    from serving.model_ref import resolve_model

    levels: dict[int, LevelTimes] = {}
    model = resolve_model("default", "cpu")
    model = dataclasses.replace(model, spec=instrumented_spec(levels, runtime))
    t0 = time.perf_counter()
    result = detect(str(scene), model, DetectOptions(), pool_config=PoolConfig(workers=0))
    wall = time.perf_counter() - t0
    order = sorted(levels)
    print(f"\nper window (ms), the default model, runtime {runtime}, {scene.name}, in this process, torch "
          f"threads {_torch_threads()}")
    print(f"  {'stage':<16}" + "".join(f"{f'level {lv}':>10}" for lv in order) + f"{'all':>10}{'share':>8}")
    all_windows = sum(levels[lv].windows for lv in order)
    grand = sum(sum(levels[lv].seconds.values()) for lv in order)
    for stage in STAGES:
        cols = "".join(f"{1000 * levels[lv].seconds.get(stage, 0.0) / levels[lv].windows:>10.0f}" for lv in order)
        total = sum(levels[lv].seconds.get(stage, 0.0) for lv in order)
        print(f"  {stage:<16}{cols}{1000 * total / all_windows:>10.0f}{100 * total / grand:>7.0f}%")
    cols = "".join(f"{1000 * sum(levels[lv].seconds.values()) / levels[lv].windows:>10.0f}" for lv in order)
    print(f"  {'detector call':<16}{cols}{1000 * grand / all_windows:>10.0f}")
    print(f"  {'windows':<16}" + "".join(f"{levels[lv].windows:>10}" for lv in order) + f"{all_windows:>10}")
    t = result.timings
    print(f"scene: merge {t['merge']:.2f} s, reads {t['read']:.1f} s (summed), plan {t['plan']:.2f} s, "
          f"wall {wall:.1f} s for {result.windows} windows ({wall / max(1, result.windows):.2f} s per window), "
          f"{len(result.scores)} bridges at the operating point")
    return wall


def timed_detect(scene: Path, out: Path, runtime: str, model: str) -> float:
    """``hbdnet detect SCENE --runtime RUNTIME`` in a subprocess, from the command to the written
    GeoPackage: its wall time and its own peak resident memory (``os.wait4``)."""
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "serving.cli.main", "detect", str(scene), "-o", str(out), "-q",
                                 "--runtime", runtime, "--model", model], cwd=ROOT, stdout=stdout, stderr=stderr, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        said, errors = stdout.read(), stderr.read()
    if proc.returncode:
        sys.exit(f"bench_cpu: hbdnet detect failed: {errors.strip()}")
    plan = re.search(r"plan: (.*)", errors)
    print(f"hbdnet detect --runtime {runtime} {scene.name}: {wall:.1f} s wall, peak RSS {usage.ru_maxrss / 1024:.0f} MB "
          f"({plan.group(1) if plan else '?'})")
    print(f"  {said.strip()}")
    return wall


def sample_windows(scene: Path, folder: Path, count: int = 8) -> list[np.ndarray]:
    """``count`` full 1024 px level-0 windows spread over the mosaic, also saved as ``window_*.npy`` in
    ``folder`` for the peer's venv."""
    from rasterio.windows import Window

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    with rasterio.open(scene) as ds:
        starts = np.linspace(0, min(ds.width, ds.height) - 1024, count).astype(int)
        for i, (x, y) in enumerate(zip(starts, starts[::-1])):
            pixels = ds.read(window=Window(int(x), int(y), 1024, 1024))
            np.save(folder / f"window_{i:02d}.npy", pixels)
            out.append(pixels)
    return out


def per_window(scene: Path, runtimes: list[str], yolo_python: str | None, cache: Path, model: str) -> None:
    """Median seconds of one 1024 px window through the default model's detector, per runtime, and
    through the untrained YOLOv8-OBB peer in its own venv (``tools/bench_yolo_obb.py``), same windows."""
    import statistics

    from hbdnet.inference import load_window_detector
    from hbdnet.pyramid import PlanWindow

    folder = cache / f"windows_{scene.stem}"
    windows = sample_windows(scene, folder)
    plan = PlanWindow(0, 1, 0, 0, 1024, 1024)
    for runtime in runtimes:
        detector = load_window_detector(model, "cpu", "float32", runtime)
        detector.detect([windows[0]], [plan])  # warm-up
        times = []
        for w in windows:
            t0 = time.perf_counter()
            detector.detect([w], [plan])
            times.append(time.perf_counter() - t0)
        print(f"one 1024 px window, default model, runtime {runtime}: {statistics.median(times):.3f} s (median of "
              f"{len(times)})")
    if yolo_python:
        done = subprocess.run([yolo_python, str(ROOT / "tools" / "bench_yolo_obb.py"), "--windows", str(folder)],
                              capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"bench_cpu: the YOLO peer failed: {done.stderr.strip()[-2000:]}")
        for line in done.stdout.splitlines():
            if line.startswith("yolo "):
                _, name, seconds = line.split()
                print(f"one 1024 px window, {name} (untrained, Ultralytics predict, imgsz 1024): {float(seconds):.3f} s "
                      f"(median of {len(windows)})")


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=4096, help="the mosaic's side in px")
    ap.add_argument("--profile", action="store_true", help="the stage table per level")
    ap.add_argument("--detect", action="store_true", help="the whole hbdnet detect command, timed")
    ap.add_argument("--runtimes", nargs="+", default=["torch", "int8"], choices=["torch", "onnx", "int8"],
                    help="the detector runtimes measured, one after the other in this run")
    ap.add_argument("--window", action="store_true",
                    help="seconds per 1024 px window, per runtime, and the YOLO peer's with --yolo-python")
    ap.add_argument("--yolo-python", metavar="PYTHON",
                    help="the Python of a venv with Ultralytics (tools/bench_yolo_obb.py): YOLOv8-OBB n and s")
    ap.add_argument("--model", default="default",
                    help="for --detect and --window: a bundled model's name or a model file (runtime int8 needs "
                         "one written by hbdnet export --int8)")
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/hbdnet-bench"))
    args = ap.parse_args(argv)
    if not (args.profile or args.detect or args.window):
        ap.error("say --profile, --detect, --window or several")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()}")
    scene = mosaic(args.size, args.cache_dir)
    # The commands first: a child forked from a process that has run the model in-process would inherit
    # that process's peak in its own (Linux counts the memory a child had before its exec).
    if args.detect:
        walls = {rt: timed_detect(scene, args.cache_dir / f"cpu_mosaic_{args.size}_{rt}.gpkg", rt, args.model)
                 for rt in args.runtimes}
        if len(walls) > 1:
            first = args.runtimes[0]
            print("hbdnet detect wall ratio " + ", ".join(f"{r}/{first} {w / walls[first]:.2f}"
                                                        for r, w in walls.items() if r != first))
    if args.profile:
        walls = {runtime: profile(scene, runtime) for runtime in args.runtimes}
        if len(walls) > 1:
            first = args.runtimes[0]
            print("wall ratio " + ", ".join(f"{r}/{first} {w / walls[first]:.2f}" for r, w in walls.items() if r != first))
    if args.window:
        per_window(scene, args.runtimes, args.yolo_python, args.cache_dir, args.model)
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
