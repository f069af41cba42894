"""Benchmark: the whole pyramid plan's reads in units of one plain decode of the same scene.

    python tools/bench_pyramid.py [--sizes 8192 16384] [--current-sizes 8192] [--repeat 3] [--cache-dir DIR]

For each size, the synthetic RGB GeoTIFF of ``tools/bench_engine.py`` (tiled 512, DEFLATE + predictor,
written once into ``--cache-dir``), then, each in a fresh subprocess so that each has its own peak RSS
(``VmHWM``, the process's high-water mark: Python, numpy, GDAL and the reads):

* ``decode``: one plain decode of every pixel, block row by block row, GDAL single-threaded;
* ``decode_mt``: the same with ``NUM_THREADS=ALL_CPUS`` (the pass decodes on every core but one);
* ``pass``: ``PyramidPass`` over the scene's whole plan (every level, every window as the detector's
  uint8 RGB), its default memory settings;
* ``engine``: ``detect_scene`` with the no-op detector in process (``workers=0``): open, plan, the
  pass, merge;
* ``current`` (sizes in ``--current-sizes``): ``WindowReader`` over the same plan (today's exact reads).

The modes take turns, ``--repeat`` times (best time kept; ``current`` once), so ratios are from one
run; on a shared machine wall times are still noisy (the load average is printed with them). The
CPU seconds of each process (all its threads) are printed beside them, as ratios to the
single-threaded decode's CPU seconds. The last line is
``pass_decodes_<size>=<x> pass_cpu_decodes_<size>=<y> pass_peak_mb_<size>=<m> ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from serving.engine.detectors import NoopSpec

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))


def plain_decode(path: str, threads: str | None) -> int:
    """Decode every pixel of the scene, one block row at a time; returns the pixels read."""
    import rasterio
    from rasterio.windows import Window

    from serving.engine.gdal_cache import CacheHold

    options = {"NUM_THREADS": threads} if threads else {}
    with rasterio.open(path, **options) as ds:
        bh = ds.block_shapes[0][0]
        # The cache holds one block row (as the pass's does), so it does not fill with the scene.
        with CacheHold(int(bh * ds.width * ds.count * 1.25) + 8 * 2**20):
            n = 0
            for y0 in range(0, ds.height, bh):
                n += ds.read(window=Window(0, y0, ds.width, min(bh, ds.height - y0))).size
    return n


def plan_of(path: str):
    from serving.engine.reader import plan_scene
    from serving.engine.scene import open_scene

    info = open_scene(path)
    return info, plan_scene(info)


def run_pass(path: str) -> int:
    from serving.engine.pyramid_pass import PyramidPass

    info, plan = plan_of(path)
    with PyramidPass(plan.spec, plan.items, masked=info.masked) as one_pass:
        return sum(1 for _ in one_pass)


def run_current(path: str) -> int:
    from serving.engine.reader import WindowReader

    _, plan = plan_of(path)
    with WindowReader(plan.spec) as reader:
        return sum(1 for it in plan.items if reader.read(it.window, it.needs_mask) is not None)


def run_engine(path: str) -> int:

    from serving.testing.engine_runs import detect_file as detect_scene

    return detect_scene(path, NoopSpec(), workers=0).windows


MODES = {
    "decode": lambda p: plain_decode(p, None),
    "decode_mt": lambda p: plain_decode(p, "ALL_CPUS"),
    "pass": run_pass,
    "current": run_current,
    "engine": run_engine,
}


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ``ru_maxrss``: Linux carries that over from the parent
    across fork and exec, so a child would report the benchmark driver's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(mode: str, path: str) -> None:
    """Run one mode here and print its seconds and peak RSS as JSON."""
    t, cpu = time.perf_counter(), time.process_time()
    count = MODES[mode](path)
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    print(json.dumps({"mode": mode, "s": seconds, "cpu_s": cpu, "peak_mb": peak_rss_mb(), "count": count}))


def measure(mode: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", mode, str(path)], check=True,
                         capture_output=True, text=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384])
    ap.add_argument("--current-sizes", type=int, nargs="*", default=[8192],
                    help="sizes at which today's per-window exact reads are timed too (slow)")
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/hbdnet-bench"))
    ap.add_argument("--repeat", type=int, default=3, help="runs per mode (best is kept); 'current' runs once")
    ap.add_argument("--one", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        one(*args.one)
        return

    from tools.bench_engine import ensure_scenes

    scenes = ensure_scenes(args.cache_dir, args.sizes, fresh=False)
    summary = []
    for side in args.sizes:
        modes = ["decode", "decode_mt", "pass", "engine"] + (["current"] if side in args.current_sizes else [])
        # Best of --repeat runs per mode, the modes taking turns, so that a burst of load from other
        # processes does not land on one mode only.
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for _ in range(args.repeat):
            for m in modes:
                if m != "current" or not runs[m]:  # today's reads are slow: once
                    runs[m].append(measure(m, scenes[side]))
        res = {m: min(rs, key=lambda r: r["s"]) for m, rs in runs.items()}
        base, base_mt = res["decode"]["s"], res["decode_mt"]["s"]
        for m in modes:
            r = res[m]
            print(f"{side} px {m:9s} {r['s']:6.2f} s {r['s'] / base:5.2f} decodes "
                  f"({r['s'] / base_mt:5.2f} multi-threaded decodes)  CPU {r['cpu_s']:6.2f} s "
                  f"{r['cpu_s'] / res['decode']['cpu_s']:5.2f} decodes  peak RSS {r['peak_mb']:5.0f} MB  "
                  f"[{r['count']} {'pixels' if m.startswith('decode') else 'windows'}]", flush=True)
        print(f"{side} px load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
        summary.append(f"pass_decodes_{side}={res['pass']['s'] / base:.2f} "
                       f"pass_cpu_decodes_{side}={res['pass']['cpu_s'] / res['decode']['cpu_s']:.2f} "
                       f"pass_peak_mb_{side}={res['pass']['peak_mb']:.0f}")
    print(" ".join(summary))


if __name__ == "__main__":
    main()
