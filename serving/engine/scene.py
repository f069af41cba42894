"""Opening a scene: what a raster is (size, bands, georeferencing, masks, layout) before any pixel is read.

A scene is addressed by a URI: a local path, a GDAL virtual path (``/vsicurl/...``, ``/vsis3/...``), an
``http(s)://`` URL (read through ``/vsicurl/``) or an ``s3://`` URL (read through ``/vsis3/``). COGs are
plain GeoTIFFs to GDAL; their internal overviews show up in ``SceneInfo.overviews``.

Every open of a scene goes through ``open_raster``: a scene comes from a user (an upload, an href, a
list or STAC item given to ``hbdnet batch``), so GDAL may only use the raster drivers of
``SCENE_DRIVERS`` (never a VRT, an XML file that points GDAL at any file or URL) and must not look for
files beside it (sidecars, external overviews), and a URL is read with timeouts (``http_limits``).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import rasterio
from affine import Affine
from rasterio._base import DatasetBase
from rasterio._path import _UnparsedPath
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Interleaving, MaskFlags, Resampling
from rasterio.errors import RasterioIOError
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT

from serving.engine.gdal_errors import collecting

# Band data types a detector can be fed after the reader's normalisation (complex rasters are not images).
_USABLE_DTYPES = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32",
                  "float64"}

DEFAULT_MAX_PIXELS = 2_000_000_000  # 2 gigapixels
MIN_SCENE_SIDE = 32

# The formats a scene may be. GDAL tries these drivers only: VRT, and every format that references
# other files (or that a file can claim to be by its first bytes), never opens.
SCENE_DRIVERS: tuple[str, ...] = ("GTiff", "PNG", "JPEG", "JP2OpenJPEG")


@dataclass(frozen=True)
class HttpLimits:
    """How long GDAL waits on a URL: to connect, for a whole request, and how often it retries (a
    server that accepts the connection and never answers would otherwise hold a thread for good)."""

    connect_s: int = 10
    request_s: int = 60
    retries: int = 1


_limits = HttpLimits()
_proxy: str | None = None  # host:port every HTTP request goes through (hbdnet serve's href proxy)
# A local file is the user's own on the command line (a VRT mosaic, a file with its .aux.xml are
# theirs to use); in hbdnet serve it is a client's upload, opened like a URL.
_local_files_trusted = True


def trust_local_files(trusted: bool) -> None:
    """Whether ``open_raster`` opens local files with every GDAL driver and their sidecars (the CLI)
    or as it opens URLs (``hbdnet serve``, where a local file is an upload)."""
    global _local_files_trusted
    _local_files_trusted = trusted


def http_limits() -> HttpLimits:
    return _limits


def set_http_limits(**changes: int) -> HttpLimits:
    """Change this process's ``HttpLimits`` (``hbdnet serve --http-timeout``); returns the new ones."""
    global _limits
    _limits = replace(_limits, **changes)
    return _limits


def set_http_proxy(address: str | None, *, replacing: str | None = None) -> None:
    """Send this process's HTTP requests for scenes through the proxy at ``address`` (None: directly).
    With ``replacing``, only when that is the proxy set now (a stopping service clears its own)."""
    global _proxy
    if replacing is None or _proxy == replacing:
        _proxy = address
        if address is not None:
            for name in ("NO_PROXY", "no_proxy"):  # libcurl would go around the proxy for these hosts
                os.environ.pop(name, None)


@dataclass(frozen=True)
class RemoteAccess:
    """How a process reads URLs: its ``HttpLimits`` and the proxy its requests go through. A pool's
    workers are given the driver's (``serving.engine.pools.RayPool``), so that they read an href as
    the server does: through the href proxy, which refuses redirects to private addresses."""

    limits: HttpLimits
    proxy: str | None


def remote_access() -> RemoteAccess:
    return RemoteAccess(_limits, _proxy)


def use_remote_access(access: RemoteAccess) -> None:
    """Read URLs in this process as ``access`` says (a worker taking its driver's)."""
    global _limits
    _limits = access.limits
    set_http_proxy(access.proxy)


def scene_gdal_config() -> dict[str, str]:
    """The GDAL configuration every open of a scene runs under: one place, so that the submission
    check, the job, its workers and the CLI open a scene alike."""
    limits = _limits
    return {
        "GDAL_HTTP_CONNECTTIMEOUT": str(limits.connect_s),
        "GDAL_HTTP_TIMEOUT": str(limits.request_s),
        "GDAL_HTTP_MAX_RETRY": str(limits.retries),
        "GDAL_HTTP_RETRY_DELAY": "1",
        # No directory listing and no probe for sidecars (.aux.xml, .ovr, .msk, world files): a scene
        # is its one file. Over HTTP each probe is a request, and rasterio holds the Python GIL
        # through some of them (georeferencing read lazily), so a stalling server froze the process.
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "GDAL_PAM_ENABLED": "NO",  # nor read or write .aux.xml beside it
        **({"GDAL_HTTP_PROXY": _proxy, "GDAL_HTTPS_PROXY": _proxy} if _proxy else {}),
    }


def open_raster(path: str, *, untrusted: bool = False, **open_options: str) -> DatasetReader:
    """Open a scene's GDAL path (``gdal_path``) read-only with ``SCENE_DRIVERS`` under
    ``scene_gdal_config``. GDAL takes the HTTP settings when the file is opened, so they hold for the
    dataset's later reads too. Raises ``RasterioIOError`` as ``rasterio.open`` does.

    A URL always opens so; a local file so when ``untrusted`` or where local files are not trusted
    (``trust_local_files``)."""
    if _local_files_trusted and not untrusted and _is_local(path):
        return rasterio.open(path, **open_options)
    with rasterio.Env(**scene_gdal_config()), collecting() as gdal_said:
        try:
            # rasterio.open takes one driver name; the reader passes a list to GDALOpenEx as its
            # allowed drivers, so a file of another format is never handed to another driver.
            return DatasetReader(_UnparsedPath(path), driver=list(SCENE_DRIVERS), **open_options)
        except RasterioIOError as exc:
            cause = next((m for m in gdal_said if not _unrecognised(m)), None)
            if cause is not None and _unrecognised(str(exc)):
                # GDAL said why first (a server without range requests, an HTTP error); rasterio kept
                # only the generic line that followed
                raise RasterioIOError(f"{path}: {cause}") from None
            if _is_local(path) and os.path.isfile(path) and "No such file" in str(exc):
                # what rasterio says when no allowed driver recognises an existing file
                raise RasterioIOError(f"{path}: not recognized as a supported file format") from None
            raise


def _unrecognised(message: str) -> bool:
    return "not recognized as" in message or "not recognised as" in message


class SceneError(Exception):
    """A scene cannot be used; the message is one line that says why."""


@dataclass(frozen=True)
class Regrid:
    """The scene as the engine reads it when that is not the file's own pixels: a part of it (from
    scene pixel ``col_off``, ``row_off``: an area of interest's), and/or resampled, ``factor`` working
    pixels to a scene pixel on both axes (< 1: coarser, > 1: finer); ``width`` x ``height`` working
    pixels, all on the scene. Same CRS. GDAL reads it on the fly (a warped VRT: never the scene in
    memory, nor any pixel outside the part), by area average going down, bilinear going up, and as
    the file's own pixels at ``factor`` 1."""

    factor: float
    width: int
    height: int
    col_off: int = 0
    row_off: int = 0

    @classmethod
    def of(cls, width: int, height: int, factor: float, col_off: int = 0, row_off: int = 0) -> Regrid:
        """The grid of ``width`` x ``height`` scene pixels from (``col_off``, ``row_off``) at ``factor``:
        its size rounded down, so that every working pixel lies on that part of the scene."""
        return cls(factor, max(1, math.floor(width * factor + 1e-9)), max(1, math.floor(height * factor + 1e-9)),
                   col_off, row_off)

    @property
    def resampling(self) -> Resampling:
        if self.factor == 1:
            return Resampling.nearest
        return Resampling.average if self.factor < 1 else Resampling.bilinear

    def transform(self, scene: Affine) -> Affine:
        """The working grid's transform, from the scene's."""
        return scene * Affine.translation(self.col_off, self.row_off) * Affine.scale(1.0 / self.factor)

    def to_scene(self, boxes: np.ndarray) -> np.ndarray:
        """``(N, 5)`` boxes (cx, cy, w, h, angle) in working pixels, in the scene's."""
        out = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, 5)
        out[:, :4] /= self.factor
        out[:, 0] += self.col_off
        out[:, 1] += self.row_off
        return out

    def from_scene(self, boxes: np.ndarray) -> np.ndarray:
        """``(N, 5)`` boxes in the scene's pixels, in working pixels."""
        out = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, 5)
        out[:, 0] -= self.col_off
        out[:, 1] -= self.row_off
        out[:, :4] *= self.factor
        return out


@contextlib.contextmanager
def open_grid(path: str, regrid: Regrid | None, **open_options: str) -> Iterator[DatasetBase]:
    """``open_raster(path)``, seen through ``regrid`` when there is one: what every read of a
    planned scene opens, so that the plan's windows, masks and stretch are all on one grid."""
    with open_raster(path, **open_options) as ds:
        if regrid is None:
            yield ds
            return
        with WarpedVRT(ds, width=regrid.width, height=regrid.height, transform=regrid.transform(ds.transform),
                       resampling=regrid.resampling) as vrt:
            yield vrt


def regridded(info: SceneInfo, regrid: Regrid | None) -> SceneInfo:
    """The description of the scene on ``regrid``'s working grid (``info`` itself without one)."""
    if regrid is None:
        return info
    with open_grid(info.uri, regrid) as vrt:
        return replace(describe(vrt, info.uri), overviews=(), regrid=regrid)


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
    regrid: Regrid | None = None  # this describes the scene on a working grid (``regridded``)

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
    ``/home/me/scenes/a.tif``), a URL or GDAL virtual path as given but without its secrets
    (``public_href``)."""
    return os.path.abspath(uri) if _is_local(uri) else public_href(uri)


# Query parameters that sign or authorise a URL: a presigned URL (S3 X-Amz-*, Google X-Goog-*, Azure
# SAS ``sig``, CloudFront Signature/Policy/Key-Pair-Id, API tokens) works as a password while it lives.
_SIGNING = re.compile(r"x-amz-.*|x-goog-.*|sig|signature|policy|key-pair-id|awsaccesskeyid|googleaccessid|"
                      r"(api[-_]?)?key|.*token.*|.*secret.*|.*password.*|.*credential.*|auth(orization)?", re.IGNORECASE)


def public_href(href: str) -> str:
    """``href`` as it may be shown and stored for people: without user info (``http://u:p@host``)
    and without the query parameters that sign or authorise it (``_SIGNING``); the others stay. A
    GDAL path of a URL (``/vsicurl/https://...``) keeps its prefix. Anything else comes back as is.
    The job still fetches the href as given: only what is shown loses its secrets."""
    prefix, sep, url = href.partition("://")
    if not sep:
        return href
    head, slash, scheme = prefix.rpartition("/")  # "/vsicurl/https" -> "/vsicurl", "https"
    parts = urlsplit(scheme + "://" + url)
    netloc = parts.netloc.rpartition("@")[2]
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if not _SIGNING.fullmatch(k)])
    return head + slash + urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def shown_as(text: str, uri: str, label: str) -> str:
    """``text`` (a message about the scene at ``uri``) naming it ``label`` instead: the GDAL path and
    the URI (which may hold a server path or an href's secrets) replaced wherever they appear."""
    for name in sorted({gdal_path(uri), uri}, key=len, reverse=True):
        text = text.replace(name, label)
    return text


def open_scene(uri: str) -> SceneInfo:
    """Open ``uri`` and describe it. Raises ``SceneError`` for missing files, non-rasters and scenes
    without a usable band."""
    path = gdal_path(uri)
    if _is_local(path) and not os.path.exists(path):
        raise SceneError(f"scene not found: {uri}")
    try:
        with open_raster(path) as ds:
            info = describe(ds, path)
    except RasterioIOError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "not recognized as" in first_line or "not recognised as" in first_line:
            first_line = "not a GeoTIFF, PNG, JPEG or JPEG 2000 file"
        raise SceneError(f"cannot open {uri} as a raster: {first_line.replace(path, uri)}") from exc
    if not info.usable_bands:
        raise SceneError(f"scene has no usable image band (count={info.count}, dtypes={info.dtypes}, "
                         f"alpha bands={info.alpha_bands}): {uri}")
    return info


def describe(ds: DatasetBase, uri: str) -> SceneInfo:
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
