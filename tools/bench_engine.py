"""Benchmark of the large-scene engine: memory against scene size, pipeline overhead, merge time.

    python tools/bench_engine.py [--sizes 4096 8192 16384] [--fresh] [--light-model PATH] [--sahi-python PY]

1. Writes synthetic RGB GeoTIFFs (tiled 512, DEFLATE + predictor) of each size into ``--cache-dir``
   (kept between runs unless ``--fresh``).
2. Runs ``detect_scene`` on each with the no-op detector and the default workers (in process on a
   machine without a GPU; ``--workers N``: N Ray actors), each scene in a fresh subprocess
   (``--one``), and samples every ~50 ms the summed RSS of that subprocess's whole process tree (the
   driver, and Ray's gcs_server, raylet, agents and workers where Ray runs, which are its descendants).
   The 16384/8192 px peak ratio is printed against the per-window engine's requirement (<= 1.1); the
   one-pass read (issue 11) does not meet it by design: it holds a row of windows and a few block rows
   across the scene's whole width, so its peak grows with the width (about 230 MB at 8192 px, 310 MB
   at 16384, 510 MB at 4096 x 65536), not with the area. With ``--sahi-python`` (the
   Python of a separate environment with ``sahi==0.12.8``, which needs other versions of our
   dependencies), SAHI's ``get_sliced_prediction`` (1024 px slices, 0.2 overlap, a model that
   finds nothing) runs on the same scene right after, measured the same way; target: our default
   call's peak below SAHI's at every size.
3. Same with the light model on the largest scene, the whole run: every window, then the merge in
   the driver (an untrained model's many overlapping boxes make the merge the driver's peak). A CPU
   forward pass of the light model takes about a second per window, so this takes about 10 minutes
   at 16384 px on 2 cores; ``--light-seconds`` stops it earlier and reports the peak so far (then
   without the merge). Without ``--light-model`` an untrained checkpoint is built from
   ``configs/hbdnet_lite_cpu.yaml`` (same architecture, so the same memory and time per window; its
   detections are meaningless, and denser than a trained model's).
4. Pipeline efficiency: the engine's wall time with the no-op detector divided by the time to read
   the same windows (same plan, same ``read_pyramid_window`` calls, same GDAL cache) in one process.
   Reported with and without the Ray start-up, and for the in-process engine (``workers=0``); each
   of the three times is the best of two runs.
5. Merge time of 100,000 detections (``serving.testing.simulate.time_merge``).

The last line is ``rss_ratio_16k_8k=<x> rss_16k_light_mb=<m> pipeline_ratio=<y> merge_s=<z>
rss_vs_sahi_max=<r>`` (the largest ratio of our peak to SAHI's; NaN without ``--sahi-python``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import rasterio
from affine import Affine

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))


# --- scenes -----------------------------------------------------------------------------------------

def write_scene(path: Path, side: int, seed: int = 0) -> None:
    """A textured RGB scene: gradients, noise and straight bright lines, written 512 rows at a time."""
    rng = np.random.default_rng(seed)
    profile = dict(driver="GTiff", width=side, height=side, count=3, dtype="uint8", tiled=True,
                   blockxsize=512, blockysize=512, compress="deflate", predictor=2, crs="EPSG:32631",
                   transform=Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 5800000.0), BIGTIFF="IF_SAFER")
    tmp = path.with_name(path.name + ".tmp")
    xx = np.arange(side, dtype=np.float32)
    with rasterio.open(tmp, "w", **profile) as ds:
        for r0 in range(0, side, 512):
            yy = np.arange(r0, r0 + 512, dtype=np.float32)[:, None]
            strip = np.empty((3, 512, side), np.uint8)
            for b in range(3):
                base = 96 + 60 * np.sin(xx / (700 + 150 * b)) * np.cos(yy / 900) + 20 * b
                strip[b] = np.clip(base + rng.normal(0, 12, (512, side)), 0, 255).astype(np.uint8)
            strip[:, (np.arange(r0, r0 + 512) % 1500) < 9, :] = 230  # long horizontal "roads"
            ds.write(strip, window=rasterio.windows.Window(0, r0, side, 512))
    tmp.rename(path)


def ensure_scenes(cache_dir: Path, sizes: list[int], fresh: bool) -> dict[int, Path]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for side in sizes:
        path = cache_dir / f"scene_{side}.tif"
        if fresh or not path.exists():
            t = time.perf_counter()
            write_scene(path, side)
            print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MB) in {time.perf_counter() - t:.1f} s",
                  flush=True)
        paths[side] = path
    return paths


def ensure_light_model(cache_dir: Path, given: str | None) -> tuple[str | None, str]:
    """(checkpoint path or None, a note on where it came from)."""
    if given:
        return (given, "given checkpoint") if Path(given).exists() else (None, f"{given} does not exist")
    path = cache_dir / "hbdnet_lite_cpu_untrained.pt"
    if path.exists():
        return str(path), "untrained checkpoint built from configs/hbdnet_lite_cpu.yaml"
    try:
        from hbdnet.checkpoint import save_checkpoint
        from hbdnet.models.hbdnet import HBDNet
        from hbdnet.training.config import load_experiment

        exp = load_experiment(REPO / "configs" / "hbdnet_lite_cpu.yaml")
        save_checkpoint(path, HBDNet(exp.model), {"name": "hbdnet_lite_cpu_untrained"})
    except Exception as exc:  # the light model is another engineer's work in progress
        return None, f"light model not available ({type(exc).__name__}: {exc})"
    return str(path), "untrained checkpoint built from configs/hbdnet_lite_cpu.yaml"


# --- one engine run in this process (the subprocess side) ------------------------------------------

def run_one(scene: str, detector: str, model: str | None, workers: int | None) -> None:

    from serving.engine.detectors import ModelSpec, NoopSpec
    from serving.testing.engine_runs import detect_file as detect_scene

    spec = NoopSpec() if detector == "noop" else ModelSpec(path=model, device="cpu")
    t = time.perf_counter()

    def progress(done: int, total: int) -> None:
        print(json.dumps({"progress": done, "total": total, "t": time.perf_counter() - t}), flush=True)

    result = detect_scene(scene, spec, workers=workers, progress=progress)
    print(json.dumps({"result": result.timings, "windows": result.windows, "detections": len(result.scores),
                      "wall": time.perf_counter() - t}), flush=True)


# --- SAHI on the same scene (run by the SAHI environment's Python) ---------------------------------

def run_sahi_one(scene: str) -> None:
    """SAHI's sliced prediction (1024 px slices, 0.2 overlap) with a model that finds nothing."""
    from sahi.models.base import DetectionModel
    from sahi.predict import get_sliced_prediction

    class Nothing(DetectionModel):
        def load_model(self) -> None:
            self.model = "nothing"

        def perform_inference(self, image: np.ndarray) -> None:
            self._original_predictions = []

        def _create_object_prediction_list_from_original_predictions(self, shift_amount_list=None,
                                                                     full_shape_list=None) -> None:
            self._object_prediction_list_per_image = [[]]

    t = time.perf_counter()
    result = get_sliced_prediction(scene, Nothing(device="cpu"), slice_height=1024, slice_width=1024,
                                   overlap_height_ratio=0.2, overlap_width_ratio=0.2, verbose=0)
    print(json.dumps({"sahi_wall": time.perf_counter() - t, "detections": len(result.object_prediction_list)}),
          flush=True)


# --- measuring a subprocess tree --------------------------------------------------------------------

class TreeRSS:
    """Peak of the summed RSS of a process and all its descendants, sampled every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.peak_procs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            if total > self.peak:
                self.peak, self.peak_procs = total, len(procs)
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def kill_tree(pid: int) -> None:
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


def measure(scene: Path, detector: str, model: str | None, workers: int | None, limit_s: float | None) -> dict:
    """Run ``--one`` in a subprocess; peak tree RSS (MB), the run's timings, and whether it finished."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", str(scene), "--detector", detector,
           ] + (["--workers", str(workers)] if workers is not None else []) + (["--model", model] if model else [])
    return measure_command(cmd, limit_s)


def measure_command(cmd: list[str], limit_s: float | None) -> dict:
    """Peak tree RSS (MB) of a command, the JSON lines it prints, and whether it finished."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                            start_new_session=True)
    lines: list[dict] = []

    def collect() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith("{"):
                lines.append(json.loads(line))

    reader = threading.Thread(target=collect, daemon=True)
    t = time.perf_counter()
    with TreeRSS(proc.pid) as rss:
        reader.start()
        try:
            proc.wait(timeout=limit_s)
            finished = True
        except subprocess.TimeoutExpired:
            finished = False
            kill_tree(proc.pid)
            proc.wait()
    reader.join(timeout=5)
    out = {"peak_mb": rss.peak / 2**20, "procs": rss.peak_procs, "finished": finished and proc.returncode == 0,
           "wall": time.perf_counter() - t}
    progress = [x for x in lines if "progress" in x]
    if progress:
        out["windows_done"], out["windows_total"] = progress[-1]["progress"], progress[-1]["total"]
    result = [x for x in lines if "result" in x]
    if result:
        out.update(timings=result[-1]["result"], detections=result[-1]["detections"])
    return out


# --- read-only baseline -----------------------------------------------------------------------------

def read_only_seconds(scene: Path) -> float:
    """Every window of the plan read with read_pyramid_window, in order, in this process."""
    from hbdnet.data.raster import read_pyramid_window
    from serving.engine.reader import plan_scene
    from serving.engine.scene import open_scene

    scene_plan = plan_scene(open_scene(str(scene)))
    spec = scene_plan.spec
    t = time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=spec.cache_mb * 2**20), rasterio.open(spec.uri) as ds:  # bytes
        for item in scene_plan.items:
            read_pyramid_window(ds, item.window, bands=spec.read_bands, resampling=spec.resampling)
    return time.perf_counter() - t


def in_process_engine_seconds(scene: Path) -> float:

    from serving.engine.detectors import NoopSpec
    from serving.testing.engine_runs import detect_file as detect_scene

    t = time.perf_counter()
    detect_scene(str(scene), NoopSpec(), workers=0)
    return time.perf_counter() - t


# --- main -------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/hbdnet-bench"))
    ap.add_argument("--fresh", action="store_true", help="rewrite the synthetic scenes")
    ap.add_argument("--workers", type=int, default=None,
                    help="Ray actors for the engine runs (default: the engine's, one CPU actor with every core)")
    ap.add_argument("--light-model", default=None, help="light HBD-Net checkpoint (default: untrained)")
    ap.add_argument("--light-seconds", type=float, default=1800.0,
                    help="stop the light-model run after this (its peak so far is reported)")
    ap.add_argument("--no-light", action="store_true")
    ap.add_argument("--merge-n", type=int, default=100_000)
    ap.add_argument("--memory-only", action="store_true", help="only the peak-memory runs (steps 1-3)")
    ap.add_argument("--sahi-python", default=None,
                    help="Python of an environment with sahi 0.12.8: also measure SAHI's peak on each scene")
    # internal: one engine run, in a subprocess
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--detector", default="noop", help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--sahi-one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.sahi_one:
        run_sahi_one(args.sahi_one)
        return
    if args.one:
        run_one(args.one, args.detector, args.model, args.workers)
        return

    t_bench = time.perf_counter()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()}", flush=True)
    scenes = ensure_scenes(args.cache_dir, sorted(args.sizes), args.fresh)
    largest = max(scenes)

    rss: dict[int, float] = {}
    sahi_rss: dict[int, float] = {}
    runs: dict[int, dict] = {}
    for side, path in scenes.items():
        r = measure(path, "noop", None, args.workers, limit_s=600)
        runs[side], rss[side] = r, r["peak_mb"]
        tim = r.get("timings", {})
        print(f"noop {side:>5} px: peak RSS {r['peak_mb']:.0f} MB over {r['procs']} processes, "
              f"finished={r['finished']}, wall {r['wall']:.1f} s, "
              + ", ".join(f"{k} {v:.2f}" for k, v in tim.items()), flush=True)
        if args.sahi_python:
            sahi = measure_command([args.sahi_python, str(Path(__file__).resolve()), "--sahi-one", str(path)], 600)
            sahi_rss[side] = sahi["peak_mb"]
            print(f"sahi {side:>5} px: peak RSS {sahi['peak_mb']:.0f} MB, finished={sahi['finished']}, "
                  f"wall {sahi['wall']:.1f} s; ours / SAHI = {r['peak_mb'] / sahi['peak_mb']:.2f} (target < 1)",
                  flush=True)
    ratio_16k_8k = rss[16384] / rss[8192] if 16384 in rss and 8192 in rss else math.nan
    print(f"rss ratio 16384/8192 = {ratio_16k_8k:.3f} (the per-window engine's requirement <= 1.1; "
          "the one-pass read's peak grows with the scene's width)", flush=True)

    light_mb = math.nan
    if not args.no_light:
        model, note = ensure_light_model(args.cache_dir, args.light_model)
        print(f"light model: {note}", flush=True)
        if model is not None:
            r = measure(scenes[largest], "model", model, args.workers, limit_s=args.light_seconds)
            light_mb = r["peak_mb"]
            done = f"{r.get('windows_done', 0)}/{r.get('windows_total', '?')} windows"
            print(f"light {largest} px: peak RSS {light_mb:.0f} MB over {r['procs']} processes, "
                  f"{'finished' if r['finished'] else f'stopped after {args.light_seconds:.0f} s'} ({done})",
                  flush=True)

    vs_sahi = max((rss[s] / sahi_rss[s] for s in sahi_rss), default=math.nan)
    if args.memory_only:
        print(f"benchmark took {time.perf_counter() - t_bench:.0f} s; load average {os.getloadavg()}", flush=True)
        print(f"rss_ratio_16k_8k={ratio_16k_8k:.3f} rss_16k_light_mb={light_mb:.0f} rss_vs_sahi_max={vs_sahi:.2f}")
        return

    # Best of two for every time in the ratio, interleaved: the machine is shared, and single timings
    # swing by 30 %.
    reads, inprocs = [], []
    for _ in range(2):
        reads.append(read_only_seconds(scenes[largest]))
        inprocs.append(in_process_engine_seconds(scenes[largest]))
    read_s, inproc = min(reads), min(inprocs)
    again = measure(scenes[largest], "noop", None, args.workers, limit_s=600).get("timings", {})
    engine = min([runs[largest].get("timings", {}), again], key=lambda t: t.get("total", math.inf))
    total = engine.get("total", math.nan)
    startup = engine.get("startup", 0.0)
    pipeline_ratio = total / read_s
    print(f"read-only runs {[round(x, 2) for x in reads]} s, in-process engine runs {[round(x, 2) for x in inprocs]} s",
          flush=True)
    print(f"pipeline {largest} px: read-only {read_s:.2f} s; Ray engine ({args.workers or 'default'} actors) {total:.2f} s "
          f"(ratio {pipeline_ratio:.3f}; Ray start-up {startup:.2f} s, without it {(total - startup) / read_s:.3f}); "
          f"in-process engine {inproc:.2f} s (ratio {inproc / read_s:.3f}); target <= 1.25", flush=True)

    merge_s = math.nan
    try:
        from serving.testing.simulate import time_merge

        m = time_merge(args.merge_n)
        merge_s = m["seconds"]
        print(f"merge: {int(m['n_detections'])} detections -> {int(m['n_merged'])} in {merge_s:.2f} s", flush=True)
    except ImportError as exc:
        print(f"merge: serving.testing.simulate.time_merge not available ({exc})", flush=True)

    print(f"benchmark took {time.perf_counter() - t_bench:.0f} s; load average {os.getloadavg()}", flush=True)
    print(f"rss_ratio_16k_8k={ratio_16k_8k:.3f} rss_16k_light_mb={light_mb:.0f} "
          f"pipeline_ratio={pipeline_ratio:.3f} merge_s={merge_s:.2f} rss_vs_sahi_max={vs_sahi:.2f}")


if __name__ == "__main__":
    main()
