"""What the web page's quicklook costs a job: its decimated read of a 16k scene of real imagery, in one
run beside a plain decode of the same scene (the engine decodes a scene about once per job).

    python tools/bench_quicklook.py [--side 16000] [--repeat 3] [--scene PATH]

The scene is the Autzen sample tiled to ``--side`` px (DEFLATE, 512 px tiles, no overviews: the
worst case, GDAL reads every block), written once to a temporary folder (or ``--scene``). Each repeat
times, alternately, ``render_quicklook`` (read, stretch, reproject to Web Mercator) and a decode of
the scene in strips of 512 rows; each side runs in a process of its own. Printed: the median seconds
of each, their ratio, and each side's peak resident memory (``VmHWM``: a process's own, unlike
``ru_maxrss``, which Linux carries over an exec).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "autzen_willamette_footbridge_0.30m.tif"

_QUICKLOOK = """
import json, sys, time
import rasterio
from serving.outputs.quicklook import render_quicklook
with rasterio.open(sys.argv[1]) as ds:
    t = time.perf_counter(); rgba, b = render_quicklook(ds, [1, 2, 3]); s = time.perf_counter() - t
print(json.dumps({"s": s, "rss_mb": int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024}))
"""
_DECODE = """
import json, sys, time
import rasterio
from rasterio.windows import Window
with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(sys.argv[1]) as ds:
    t = time.perf_counter()
    for r in range(0, ds.height, 512):
        ds.read(window=Window(0, r, ds.width, min(512, ds.height - r)))
    s = time.perf_counter() - t
print(json.dumps({"s": s, "rss_mb": int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024}))
"""


def make_scene(path: Path, side: int) -> Path:
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(SAMPLE) as src:
        tile, profile = src.read(), src.profile
    reps_y, reps_x = -(-side // tile.shape[1]), -(-side // tile.shape[2])
    profile.update(width=side, height=side, tiled=True, blockxsize=512, blockysize=512, compress="deflate",
                   photometric="RGB")
    with rasterio.open(path, "w", **profile) as dst:
        row = np.tile(tile, (1, 1, reps_x))[:, :, :side]
        for i in range(reps_y):
            y0 = i * tile.shape[1]
            rows = min(tile.shape[1], side - y0)
            dst.write(row[:, :rows], window=Window(0, y0, side, rows))
    return path


def run(script: str, scene: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", script, str(scene)], capture_output=True, text=True, check=True,
                         cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=16000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scene", type=Path, default=None, help="a scene to use instead of the tiled sample")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scene = args.scene or make_scene(Path(tmp) / "tiled.tif", args.side)
        run(_DECODE, scene)  # warm the page cache: both sides then read from memory
        quick, decode = [], []
        for i in range(args.repeat):
            for side in ((_QUICKLOOK, quick), (_DECODE, decode))[:: 1 if i % 2 == 0 else -1]:
                side[1].append(run(side[0], scene))
    q, d = statistics.median(r["s"] for r in quick), statistics.median(r["s"] for r in decode)
    what = scene.name if args.scene else f"{args.side} x {args.side} px tiled Autzen"
    print(f"scene {what}, {args.repeat} repeats")
    print(f"quicklook  {q:6.2f} s   peak {max(r['rss_mb'] for r in quick):6.0f} MB")
    print(f"decode     {d:6.2f} s   peak {max(r['rss_mb'] for r in decode):6.0f} MB")
    print(f"quicklook / decode: {q / d:.2f}")


if __name__ == "__main__":
    main()
