"""``hbdnet plan``: show the dynamic image pyramid (levels and windows) for a scene or a size."""

from __future__ import annotations

import argparse
import re
from collections import Counter

from hbdnet.pyramid import plan_pyramid, pyramid_levels


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="show the pyramid levels and windows HBD-Net runs on a scene")
    p.add_argument("scene", help="a raster path/URL, or a size such as 16384 or 3000x5000 (height x width)")
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--overlap", type=int, default=200)
    p.set_defaults(run=run)


def _scene_size(scene: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)(?:[xX](\d+))?", scene)
    if m:
        h = int(m.group(1))
        return h, int(m.group(2) or h)
    from hbdnet.commands import CliError

    try:
        import rasterio
    except ImportError as err:  # pragma: no cover - rasterio is a core dependency
        raise CliError(f"cannot open {scene!r}: rasterio is not installed") from err
    try:
        with rasterio.open(scene) as ds:
            return ds.height, ds.width
    except rasterio.errors.RasterioIOError as err:
        raise CliError(f"cannot open {scene!r} as a raster: {err}") from err


def run(args: argparse.Namespace) -> int:
    height, width = _scene_size(args.scene)
    plan = plan_pyramid(height, width, window=args.window, overlap=args.overlap)
    counts = Counter(w.level for w in plan)
    print(f"scene {height} x {width} px (height x width)")
    for lv in pyramid_levels(height, width):
        print(f"level {lv.index}: 1/{lv.scale} -> {lv.height} x {lv.width} px, {counts[lv.index]} windows")
    print(f"total windows: {len(plan)}")
    return 0
