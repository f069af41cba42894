"""Opening a scene: what a raster is (size, bands, georeferencing, masks, layout) before any pixel is read.

A scene is addressed by a URI: a local path, a GDAL virtual path (``/vsicurl/...``, ``/vsis3/...``), an
``http(s)://`` URL (read through ``/vsicurl/``) or an ``s3://`` URL (read through ``/vsis3/``). COGs are
plain GeoTIFFs to GDAL; their internal overviews show up in ``SceneInfo.overviews``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Interleaving, MaskFlags
from rasterio.errors import RasterioIOError

# Band data types a detector can be fed after the reader's normalisation (complex rasters are not images).
_USABLE_DTYPES = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32",
                  "float64"}

DEFAULT_MAX_PIXELS = 2_000_000_000  # 2 gigapixels
MIN_SCENE_SIDE = 32


class SceneError(Exception):
    """A scene cannot be used; the message is one line that says why."""


@dataclass(frozen=True)
class SceneInfo:
    """Everything the engine needs to know about a raster before reading pixels.

    ``uri`` is the path GDAL opens (URLs already mapped to ``/vsicurl/`` or ``/vsis3/``).
    Band indexes are 1-based, as in rasterio. ``nodata`` and ``dtypes`` have one entry per band.
    ``block_shapes`` are (rows, cols) per band; a striped TIFF has blocks as wide as the scene.
    ``overviews`` are the decimation factors of band 1's overviews (empty when there are none).
    """

    uri: str
    width: int
    height: int
    count: int
    dtypes: tuple[str, ...]
    crs: CRS | None
    transform: Affine
    nodata: tuple[float | None, ...]
    alpha_bands: tuple[int, ...]  # 1-based indexes of bands whose colour interpretation is alpha
    per_dataset_mask: bool  # a shared mask band (internal .msk or GDAL mask) covers all bands
    has_nodata: bool
    block_shapes: tuple[tuple[int, int], ...]
    tiled: bool
    pixel_interleaved: bool  # one decoded block holds every band (GDAL then caches all bands' blocks)
    overviews: tuple[int, ...]

    @property
    def usable_bands(self) -> tuple[int, ...]:
        """1-based indexes of the bands that carry image data (alpha bands excluded)."""
        return tuple(b for b in range(1, self.count + 1)
                     if b not in self.alpha_bands and self.dtypes[b - 1] in _USABLE_DTYPES)

    @property
    def masked(self) -> bool:
        """True when some pixels may be invalid (nodata value, alpha band or mask band)."""
        return self.has_nodata or bool(self.alpha_bands) or self.per_dataset_mask

    @property
    def striped(self) -> bool:
        return not self.tiled


def check_scene_size(info: SceneInfo, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Raise SceneError (one user-facing line) for a scene narrower/shorter than MIN_SCENE_SIDE px, or with
    more than max_pixels pixels (say the size, the limit and how to raise it)."""
    if info.width < MIN_SCENE_SIDE or info.height < MIN_SCENE_SIDE:
        raise SceneError(f"scene is too small: {info.width} x {info.height} px, each side must be at least "
                         f"{MIN_SCENE_SIDE} px: {info.uri}")
    pixels = info.width * info.height
    if pixels > max_pixels:
        raise SceneError(f"scene is too large: {info.width} x {info.height} px = {pixels:,} pixels, more than "
                         f"the limit of {max_pixels:,} (raise it with --max-pixels): {info.uri}")


def gdal_path(uri: str) -> str:
    """The path GDAL opens for ``uri``: http(s) URLs through /vsicurl/, s3:// URLs through /vsis3/."""
    if uri.startswith(("http://", "https://")):
        return "/vsicurl/" + uri
    if uri.startswith("s3://"):
        return "/vsis3/" + uri[len("s3://"):]
    return uri


def _is_local(path: str) -> bool:
    return not path.startswith("/vsi") and "://" not in path


def scene_reference(uri: str) -> str:
    """How outputs name the scene at ``uri``: a local path made absolute (``scenes/a.tif`` ->
    ``/home/me/scenes/a.tif``), a URL or GDAL virtual path as given."""
    return os.path.abspath(uri) if _is_local(uri) else uri


def open_scene(uri: str) -> SceneInfo:
    """Open ``uri`` and describe it. Raises ``SceneError`` for missing files, non-rasters and scenes
    without a usable band."""
    path = gdal_path(uri)
    if _is_local(path) and not os.path.exists(path):
        raise SceneError(f"scene not found: {uri}")
    try:
        with rasterio.open(path) as ds:
            info = describe(ds, path)
    except RasterioIOError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SceneError(f"cannot open {uri} as a raster: {first_line}") from exc
    if not info.usable_bands:
        raise SceneError(f"scene has no usable image band (count={info.count}, dtypes={info.dtypes}, "
                         f"alpha bands={info.alpha_bands}): {uri}")
    return info


def describe(ds: rasterio.io.DatasetReader, uri: str) -> SceneInfo:
    """A ``SceneInfo`` for an open dataset."""
    flags = ds.mask_flag_enums
    alpha = tuple(i + 1 for i, ci in enumerate(ds.colorinterp) if ci == ColorInterp.alpha)
    # GDAL reports alpha-derived masks as per_dataset | alpha; a mask band proper is per_dataset alone.
    per_dataset = any(MaskFlags.per_dataset in f and MaskFlags.alpha not in f for f in flags)
    has_nodata = any(v is not None for v in ds.nodatavals)
    block_shapes = tuple(tuple(int(x) for x in bs) for bs in ds.block_shapes)
    # A block as wide as the scene that is not the whole scene is a strip; a one-block scene counts as tiled.
    tiled = not (block_shapes[0][1] == ds.width and block_shapes[0][0] < ds.height)
    return SceneInfo(
        uri=uri,
        width=ds.width,
        height=ds.height,
        count=ds.count,
        dtypes=tuple(ds.dtypes),
        crs=ds.crs,
        transform=ds.transform,
        nodata=tuple(ds.nodatavals),
        alpha_bands=alpha,
        per_dataset_mask=per_dataset,
        has_nodata=has_nodata,
        block_shapes=block_shapes,
        tiled=tiled,
        pixel_interleaved=ds.count > 1 and ds.interleaving == Interleaving.pixel,
        overviews=tuple(ds.overviews(1)) if ds.count else (),
    )
