"""``hbdnet plan``: show the dynamic image pyramid (levels and windows) for a scene or a size, in
width x height like every size hbdnet prints."""

from __future__ import annotations

import argparse
import re

from hbdnet.pyramid import validate_window
from serving.cli.errors import CliError
from serving.engine.window_count import windows_per_level


def _scene_size(scene: str) -> tuple[int, int, tuple[str, float] | None]:
    """(height, width) of a size given as WIDTHxHEIGHT (or one side), or of the raster at ``scene``, with
    the raster's ground sample distance (``_gsd_words``; None for a size, or a raster without a CRS)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", scene)
    if m:
        w = int(m.group(1))
        h = int(m.group(2) or w)
        if h < 1 or w < 1:
            raise CliError(f"scene size must be at least 1 x 1 px, got {w} x {h} (width x height)")
        return h, w, None
    try:
        from rasterio.errors import RasterioIOError

        from serving.engine.scene import gdal_path, open_raster
    except ImportError as err:  # pragma: no cover - rasterio is a core dependency
        raise CliError(f"cannot open {scene!r}: rasterio is not installed") from err
    try:
        with open_raster(gdal_path(scene)) as ds:
            return ds.height, ds.width, _gsd_words(ds)
    except RasterioIOError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CliError(f"{scene!r} is neither a size (16384, 3000x5000) nor a raster that opens: {first}") from err


def _gsd_words(ds) -> tuple[str, float] | None:
    """The raster's ground sample distance in words, and as one number (``gsd_metres``)."""
    from serving.outputs.geometry_attrs import ground_sample_distance
    from serving.resolution import gsd_metres

    gsd = ground_sample_distance(ds.transform, ds.crs, ds.width, ds.height)
    if gsd is None:
        return None
    across, down = gsd
    same = abs(across - down) <= 0.01 * max(across, down)
    words = (f"{across:.3g} m" if same else f"{across:.3g} m across, {down:.3g} m down") + " a pixel at the scene's centre"
    return words, gsd_metres(ds.transform, ds.crs, ds.width, ds.height)


def run(args: argparse.Namespace) -> int:
    try:
        validate_window(args.window, args.overlap)
    except ValueError as err:
        raise CliError(str(err)) from err
    height, width, gsd = _scene_size(args.scene)
    print(f"scene {width} x {height} px (width x height), windows of {args.window} px overlapping by "
          f"{args.overlap} px")
    g = args.gsd if args.gsd is not None else (gsd[1] if gsd else None)
    if args.gsd is not None:
        print(f"ground sample distance: {args.gsd:.3g} m a pixel (given)")
    elif gsd is not None:
        print(f"ground sample distance: {gsd[0]}")
    res, model_gsd = _resolution(args, width, height, g)
    if model_gsd is not None:
        print(f"model {args.model or 'default'}: finest level at {model_gsd.min:.3g}-{model_gsd.best:.3g} m a pixel, "
              f"levels up to {model_gsd.max:.3g} m")
    if res.regrid is not None:
        way = "down" if res.regrid.factor < 1 else "up"
        print(f"resampled {way} to {res.level_gsds[0]:.3g} m a pixel: {res.regrid.width} x {res.regrid.height} px "
              f"({res.regrid.factor:.3g}x)")
        height, width = res.regrid.height, res.regrid.width
    total = 0
    for lv, n in windows_per_level(height, width, args.window, args.overlap):
        at = f", {res.level_gsds[lv.index]:.3g} m" if res.level_gsds else ""
        line = f"level {lv.index}: 1/{lv.scale} -> {lv.width} x {lv.height} px{at}, {n:,} window{'' if n == 1 else 's'}"
        if res.levels is not None and lv.index not in res.levels:
            line += " (not run: outside the model's range)"
        else:
            total += n
        print(line)
    print(f"total windows: {total:,}")
    return 0


def _resolution(args: argparse.Namespace, width: int, height: int, gsd: float | None):
    """The scene's ``ResolutionPlan`` for the model named (its GSD range read from the file), and
    that range (None: the model records none)."""
    from serving.cli.arguments import resolve_model
    from serving.engine.scene import SceneError
    from serving.resolution import plan_grid

    model = resolve_model(args.model) if gsd is not None or args.resolution is not None else None
    model_gsd = model.gsd if model is not None else None
    try:
        return plan_grid(width, height, gsd, model_gsd, resolution=args.resolution, window=args.window,
                         label=args.scene), model_gsd
    except SceneError as err:
        raise CliError(str(err)) from err
