"""A scene's quicklook for a web map: at most ``max_side`` pixels a side, reprojected to Web Mercator
(EPSG:3857, the CRS of the page's map), transparent where the scene has no data, written as a PNG
beside a JSON file of its corners in longitude and latitude.

The scene is read decimated (GDAL's average resampling), never whole: from its overviews where it
has them, and otherwise block by block through GDAL's cache, held at ``QUICKLOOK_CACHE_BYTES``
meanwhile. Without overviews that costs about three and a half decodes of the scene, once per job
(``tools/bench_quicklook.py``: a 16k DEFLATE scene of real imagery, 4.4 s against 1.3 s for a decode
in strips); GDAL's decimation, not the reading, is the cost. Values other than 8-bit are stretched to
0-255 between the 2nd and 98th percentiles of the quicklook's own valid pixels (a picture to look
at, not the model's input).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.errors
from affine import Affine
from rasterio.enums import Resampling
from rasterio.io import DatasetReader
from rasterio.transform import array_bounds
from rasterio.warp import calculate_default_transform, reproject, transform

from serving.engine.gdal_cache import CacheHold
from serving.engine.stretch import stretch_from_samples, valid_mask

WEB_MERCATOR = "EPSG:3857"
DEFAULT_MAX_SIDE = 1024
# GDAL's block cache while the quicklook is read (unless a reader holds more): without overviews,
# GDAL reads the scene's blocks through it into the small output, so it bounds the memory. (On a 16k
# scene with 512 px tiles: 6.2 s at 32 MB, 4.3 s at 64, 128 or 256 MB.)
QUICKLOOK_CACHE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class QuicklookBounds:
    """The PNG's edges in degrees (WGS84): the image spans them exactly in Web Mercator."""

    west: float
    south: float
    east: float
    north: float
    width: int
    height: int


def render_quicklook(ds: DatasetReader, bands: Sequence[int], *,
                     max_side: int = DEFAULT_MAX_SIDE) -> tuple[np.ndarray, QuicklookBounds]:
    """(4, h, w) uint8 RGBA in Web Mercator and its bounds; ``bands`` 1-based, one (grey) or three.
    Raises ValueError for a scene without a CRS (it has no place on a map)."""
    if ds.crs is None:
        raise ValueError("the scene has no CRS, so it has no place on a map")
    bands = list(bands) * 3 if len(bands) == 1 else list(bands)
    factor = max(1.0, max(ds.width, ds.height) / max_side)
    h, w = max(1, round(ds.height / factor)), max(1, round(ds.width / factor))
    hold = CacheHold(QUICKLOOK_CACHE_BYTES)
    try:
        data = ds.read(bands, out_shape=(len(bands), h, w), resampling=Resampling.average)
        valid = valid_mask(ds, bands, out_shape=(h, w), data=data)
    finally:
        hold.release()
    rgb = data if data.dtype == np.uint8 else stretch_from_samples(
        data.reshape(len(bands), -1), valid.ravel(), (2.0, 98.0)).apply(data)
    rgba = np.concatenate([rgb, (valid * np.uint8(255))[None]])

    src_transform = ds.transform @ Affine.scale(ds.width / w, ds.height / h)
    dst_transform, dw, dh = calculate_default_transform(ds.crs, WEB_MERCATOR, w, h,
                                                        *array_bounds(h, w, src_transform))
    grow = max(dw, dh) / max_side  # a CRS far from Mercator can widen the footprint
    if grow > 1.0:
        dw, dh = max(1, math.ceil(dw / grow)), max(1, math.ceil(dh / grow))
        dst_transform = dst_transform @ Affine.scale(grow, grow)
    out = np.zeros((4, dh, dw), np.uint8)  # alpha 0 outside the scene's footprint
    for i, resampling in enumerate([Resampling.bilinear] * 3 + [Resampling.nearest]):
        reproject(rgba[i], out[i], src_transform=src_transform, src_crs=ds.crs, dst_transform=dst_transform,
                  dst_crs=WEB_MERCATOR, resampling=resampling)
    west, north = dst_transform @ (0, 0)
    east, south = dst_transform @ (dw, dh)
    (lon_w, lon_e), (lat_s, lat_n) = transform(WEB_MERCATOR, "EPSG:4326", [west, east], [south, north])
    return out, QuicklookBounds(lon_w, lat_s, lon_e, lat_n, dw, dh)


def write_quicklook(ds: DatasetReader, bands: Sequence[int], png: Path, *,
                    max_side: int = DEFAULT_MAX_SIDE) -> QuicklookBounds:
    """``render_quicklook`` to ``png``, and its bounds to ``png`` with the suffix ``.json``."""
    rgba, bounds = render_quicklook(ds, bands, max_side=max_side)
    with warnings.catch_warnings(), rasterio.Env(GDAL_PAM_ENABLED="NO"):
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # a picture, no transform
        with rasterio.open(png, "w", driver="PNG", width=bounds.width, height=bounds.height, count=4,
                           dtype="uint8") as out:
            out.write(rgba)
    png.with_suffix(".json").write_text(json.dumps(asdict(bounds)))
    return bounds


def read_bounds(png: Path) -> QuicklookBounds:
    return QuicklookBounds(**json.loads(png.with_suffix(".json").read_text()))
