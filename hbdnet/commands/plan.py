"""``hbdnet plan``: show the dynamic image pyramid (levels and windows) for a scene or a size."""

from __future__ import annotations

import argparse
import re

from hbdnet.commands import CliError
from hbdnet.commands.arguments import one_line_errors, whole_number
from hbdnet.pyramid import pyramid_levels, validate_window, window_starts


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="show the pyramid levels and windows HBD-Net runs on a scene",
                       description="Show the pyramid levels and windows HBD-Net runs on a scene. Exit codes: "
                                   "0 done, 2 a bad size, window or overlap, or a file that is not a raster.")
    p.add_argument("scene", help="a raster path/URL, or a size such as 16384 or 3000x5000 (height x width)")
    p.add_argument("--window", type=whole_number("window", 1, "px"), default=1024, metavar="PX", help="window side (default 1024)")
    p.add_argument("--overlap", type=whole_number("overlap", 0, "px"), default=200, metavar="PX",
                   help="overlap of neighbouring windows, less than --window (default 200)")
    p.set_defaults(run=run)
    one_line_errors(p)


def _scene_size(scene: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", scene)
    if m:
        h = int(m.group(1))
        w = int(m.group(2) or h)
        if h < 1 or w < 1:
            raise CliError(f"scene size must be at least 1 x 1 px, got {h} x {w}")
        return h, w
    try:
        import rasterio
        from rasterio.errors import RasterioIOError
    except ImportError as err:  # pragma: no cover - rasterio is a core dependency
        raise CliError(f"cannot open {scene!r}: rasterio is not installed") from err
    try:
        with rasterio.open(scene) as ds:
            return ds.height, ds.width
    except RasterioIOError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CliError(f"{scene!r} is neither a size (16384, 3000x5000) nor a raster that opens: {first}") from err


def run(args: argparse.Namespace) -> int:
    try:
        validate_window(args.window, args.overlap)
    except ValueError as err:
        raise CliError(str(err)) from err
    height, width = _scene_size(args.scene)
    # Counted per axis, not listed: a huge scene with a small window has more windows than memory.
    print(f"scene {height} x {width} px (height x width), windows of {args.window} px overlapping by "
          f"{args.overlap} px")
    total = 0
    for lv in pyramid_levels(height, width, args.window):
        n = len(window_starts(lv.height, args.window, args.overlap)) * len(
            window_starts(lv.width, args.window, args.overlap))
        total += n
        print(f"level {lv.index}: 1/{lv.scale} -> {lv.height} x {lv.width} px, {n:,} window{'' if n == 1 else 's'}")
    print(f"total windows: {total:,}")
    return 0
