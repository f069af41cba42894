"""The streaming reader: the pyramid plan of a scene, one window at a time, as uint8 RGB arrays.

The scene is never held in memory. What is computed once per scene (``prepare_read``) is small:

* **Bands.** 3 usable bands are RGB as they are; 1 band is replicated to 3; 4 or more use the first
  three non-alpha bands unless ``bands=(r, g, b)`` (1-based) is given; 2 usable bands need ``bands``.
* **Value stretch** (``Stretch``). uint8 scenes are used as they are. Every other data type is mapped
  per band with a per-scene linear stretch: the 2nd and 98th percentiles (``percentiles``) of the
  band's valid pixels, estimated once from a sample of the scene's own blocks (at most 64, spread
  over the scene, decimated to at most 1024 x 1024 samples: ``serving.engine.stretch``; a
  scene of at most that many pixels is sampled whole), go to 0 and 255; values outside are clipped
  and NaN becomes 0. The same map is used at every window and level, so a
  bridge looks the same wherever it is cut.
* **Coverage** (``CoverageMap``). For scenes with a nodata value, an alpha band, a mask band or a
  floating-point band, one streaming pass over the validity mask records, per cell of a coarse grid,
  whether any and whether all of its pixels are valid (skipped with ``coverage_scan=False``, for the
  one-pass reader, which finds empty windows as it decodes). A window whose footprint has no valid cell is
  skipped without a read; a window whose cells are all fully valid is read without a mask; the others
  read the exact mask at the window, and their invalid pixels are set to 0 in all three channels. A
  pixel is valid when any selected band is valid there (rasterio's dataset-mask rule: nodata is per
  band, and RGB (0, 5, 3) with nodata 0 is a valid pixel). **NaN and infinities are nodata** in every
  floating-point band, declared or not: a band value that is not finite is invalid, like a nodata
  value (GDAL's mask knows only a declared NaN nodata). A scene with no valid pixel is planned with no
  window and a notice (``EmptySceneWarning``); windows without a valid pixel are noted too
  (``EmptyWindowsWarning``).
* **GDAL block cache.** While a ``WindowReader`` is open, the process's GDAL cache is held at one row
  of windows' blocks (``cache_mb_for``; ``serving.engine.gdal_cache``): large enough that blocks shared by
  neighbouring windows, and by consecutive rows of windows, are decoded once; small enough that
  memory does not grow with the scene (GDAL's default cache is a share of the machine's RAM and
  fills up with the whole scene). It is held for the reader's life, not set per read, so that
  readers on several threads share one budget.

Striped (non-tiled) TIFFs are read in the plan's row-of-windows order, so each strip is decoded once
per row of windows with that cache; a warning suggests converting them to a tiled COG.

The in-process pool reads the exact pyramid with ``serving.engine.pyramid_pass`` instead (every level
from one decode, identical pixels); ``WindowReader`` serves Ray workers and ``resampling="overview"``.

Pyramid levels come from ``hbdnet.data.raster.read_pyramid_window``: ``resampling="exact"`` (default)
is bilinear 1/2**k from full resolution, as the model was trained and tested; ``"overview"`` takes the
scene's GDAL overviews when present, which is much faster on large scenes but differs from the
training pyramid (overviews are usually built by iterated 2x box filtering, which blurs thin bridges
more than bilinear 1/2**k sampling), so expect somewhat different coarse-level detections.
"""

from __future__ import annotations

import contextlib
import enum
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import rasterio
import shapely
from rasterio.windows import Window

from hbdnet.data.raster import DEFAULT_MAX_CHUNK_BYTES, read_pyramid_window
from hbdnet.pyramid import PlanWindow, plan_pyramid
from serving.engine.aoi import windows_meeting
from serving.engine.gdal_cache import CacheHold
from serving.engine.scene import Regrid, SceneError, SceneInfo, open_grid, open_scene
from serving.engine.stretch import Stretch, sample_stretch, stretch_from_samples, valid_mask

PyramidResampling = Literal["exact", "overview"]


class StripedSceneWarning(UserWarning):
    """The scene is stored in strips: reading works but is slower than from a tiled GeoTIFF / COG."""


class EmptySceneWarning(UserWarning):
    """The scene has no valid pixel (all nodata, masked or NaN): no window is run, nothing is found."""


class EmptyWindowsWarning(UserWarning):
    """Some windows of the scene have no valid pixel and are not run."""


class OutsideAreaWarning(UserWarning):
    """The area of interest does not overlap the scene: no window is run, nothing is found."""


def has_float_bands(info: SceneInfo, bands: Sequence[int]) -> bool:
    """Whether any of ``bands`` is floating point, so that NaN and infinities may mark nodata."""
    return any(np.dtype(info.dtypes[b - 1]).kind == "f" for b in bands)


@dataclass(frozen=True)
class ReadSpec:
    """How a worker reads a scene: picklable, small, the same for every window of the scene.

    ``read_bands`` are the distinct 1-based bands read from the file; ``rgb`` indexes into them to make
    the 3 output channels (a 1-band scene reads band 1 once and uses it thrice).
    """

    uri: str
    read_bands: tuple[int, ...]
    rgb: tuple[int, int, int]
    stretch: Stretch | None
    resampling: PyramidResampling = "exact"
    cache_mb: int = 64  # GDAL block cache held while the scene is read (``cache_mb_for``)
    finite_only: bool = False  # floating-point bands: a pixel with no finite selected band is invalid
    regrid: Regrid | None = None  # windows are on this working grid of the scene (``open_grid``)


class Coverage(enum.Enum):
    EMPTY = 0  # no valid pixel: skip the window
    PARTIAL = 1  # read the mask with the window
    FULL = 2  # every pixel valid: no mask read


@dataclass(frozen=True, eq=False)
class CoverageMap:
    """Validity of a scene on a coarse grid of ``cell`` x ``cell`` full-resolution pixels.

    ``any_valid`` and ``all_valid`` are (ceil(H / cell), ceil(W / cell)) booleans. Both are exact per
    cell, so window decisions are conservative: EMPTY only when no pixel under the window's footprint
    is valid, FULL only when all are.
    """

    cell: int
    any_valid: np.ndarray
    all_valid: np.ndarray

    def classify(self, window: PlanWindow) -> Coverage:
        x0, y0, x1, y1 = window.scene_bounds()
        c = self.cell
        rows = slice(int(y0) // c, math.ceil(y1 / c))
        cols = slice(int(x0) // c, math.ceil(x1 / c))
        if not self.any_valid[rows, cols].any():
            return Coverage.EMPTY
        if self.all_valid[rows, cols].all():
            return Coverage.FULL
        return Coverage.PARTIAL


@dataclass(frozen=True)
class ReadItem:
    """One window to read: its position in the plan, and whether its mask must be read with it."""

    index: int
    window: PlanWindow
    needs_mask: bool = False


@dataclass(frozen=True)
class ScenePlan:
    """The reads of a scene: the windows to read in plan order, the plan indexes skipped as empty and
    those outside the area of interest (``area_px``, in the scene's pixels; None: the whole scene),
    and what the caller should be warned of (a striped layout), returned rather than emitted so that
    scenes can be planned on any thread (``warnings`` capture is process-wide)."""

    spec: ReadSpec
    plan: list[PlanWindow]
    items: list[ReadItem]
    skipped: list[int] = field(default_factory=list)
    warnings: tuple[Warning, ...] = ()
    coverage: CoverageMap | None = None  # None: every pixel of the scene is valid
    outside: list[int] = field(default_factory=list)
    area_px: shapely.Geometry | None = None


def select_bands(info: SceneInfo, bands: Sequence[int] | None = None) -> tuple[int, int, int]:
    """The 1-based bands that become R, G, B (see the module docstring for the defaults)."""
    if bands is not None:
        bands = tuple(int(b) for b in bands)
        if len(bands) == 1:
            bands = bands * 3
        if len(bands) != 3:
            raise SceneError(f"bands must name 1 or 3 bands, got {bands}")
        bad = [b for b in bands if not 1 <= b <= info.count]
        if bad:
            raise SceneError(f"bands {bad} out of range 1..{info.count} in {info.uri}")
        return bands  # type: ignore[return-value]
    usable = info.usable_bands
    if len(usable) == 1:
        return (usable[0],) * 3
    if len(usable) == 2:
        raise SceneError(f"scene has 2 image bands {usable}: pass bands=(r, g, b) explicitly: {info.uri}")
    if not usable:
        raise SceneError(f"scene has no usable image band: {info.uri}")
    return usable[0], usable[1], usable[2]


def cache_mb_for(info: SceneInfo, read_bands: Sequence[int], window: int) -> int:
    """GDAL block cache (MB): one row of windows' blocks across the scene, plus one level-read chunk.

    A ``window``-high row of windows touches at most ceil((window - 1) / block_rows) + 1 block rows;
    the next row of windows starts ``window - overlap`` lower and reuses the last of them, so with that
    much cache every level-0 block is decoded once. Coarse levels are read by ``read_pyramid_window``
    in chunks of up to ``DEFAULT_MAX_CHUNK_BYTES`` of full-resolution pixels, each read in several
    decimated passes: the chunk's blocks must stay cached between passes, or every pass decodes them
    again (measured at 16384 px: the one level-4 window took 23 s with a 90 MB cache, 3 s with 160 MB).
    Pixel-interleaved files decode all bands of a block together; a mask band adds its own blocks.
    """
    bh, bw = info.block_shapes[read_bands[0] - 1]
    rows = min((math.ceil((min(window, info.height) - 1) / bh) + 1) * bh, math.ceil(info.height / bh) * bh)
    cols = math.ceil(info.width / bw) * bw
    n_bands = info.count if info.pixel_interleaved else len(set(read_bands))
    if info.per_dataset_mask and not info.alpha_bands:
        n_bands += 1
    itemsize = max(np.dtype(info.dtypes[b - 1]).itemsize for b in read_bands)
    row_bytes = rows * cols * n_bands * itemsize
    chunk_bytes = min(DEFAULT_MAX_CHUNK_BYTES, info.height * info.width * n_bands * itemsize)
    return max(32, math.ceil((row_bytes + chunk_bytes) * 1.1 / 2**20) + 8)


def valid_at(info: SceneInfo, spec: ReadSpec, coverage: CoverageMap | None, cols: np.ndarray,
             rows: np.ndarray) -> np.ndarray:
    """Boolean (N,): whether scene pixels (``cols``, ``rows``), inside the scene, are valid.

    The coverage grid answers for cells that are all valid or all invalid; the pixels in mixed cells
    are read one by one (the mask, and the values of floating-point bands)."""
    if not len(cols) or (coverage is None and not (info.masked or spec.finite_only)):
        return np.ones(len(cols), dtype=bool)
    if coverage is None:  # planned without a coverage scan: read every pixel asked about
        valid, unsure = np.zeros(len(cols), dtype=bool), np.arange(len(cols))
    else:
        r, c = rows // coverage.cell, cols // coverage.cell
        valid = coverage.all_valid[r, c].copy()
        unsure = np.flatnonzero(coverage.any_valid[r, c] & ~valid)
    if unsure.size:
        bands = list(spec.read_bands)
        with CacheHold(spec.cache_mb * 2**20), open_grid(info.uri, spec.regrid) as ds:
            for i in unsure:
                window = Window(int(cols[i]), int(rows[i]), 1, 1)
                data = ds.read(bands, window=window) if spec.finite_only else None
                valid[i] = bool(valid_mask(ds, bands, window=window, data=data)[0, 0])
    return valid


def scan_scene(ds: rasterio.io.DatasetReader, read_bands: Sequence[int], *, stretch: bool, masked: bool,
               percentiles: tuple[float, float] = (2.0, 98.0), max_side: int = 1024, max_cells: int = 1024,
               strip_bytes: int = 32 * 2**20, finite_only: bool = False) -> tuple[Stretch | None, CoverageMap | None]:
    """What ``prepare_read`` needs from the pixels, in at most one pass over the scene.

    * Stretch: percentiles of a regular sample of every ``f``-th row and column (``f`` chosen so that
      the sample is at most ``max_side`` on a side), restricted to valid pixels, taken from
      full-resolution strips. Not from a GDAL decimated read: without overviews those are slow
      (measured at 8192 px uint16: 3.2 s, against 0.5 s for all 16 strips), and with overviews the
      values are averages, whose spread is narrower than the pixels' (on a noisy test scene the 2nd
      percentile came out at 1085 instead of 174).
    * Coverage (masked scenes): the validity mask read strip by strip and reduced to cells; with
      ``finite_only`` (floating-point bands) the values are read too and a non-finite one is invalid.
    Strips are a whole number of cells high and at most ``strip_bytes``.
    """
    h, w = ds.height, ds.width
    bands = list(read_bands)
    f = max(1, math.ceil(max(h, w) / max_side))
    cell = max(1, math.ceil(max(h, w) / max_cells)) if masked else 1
    gh, gw = math.ceil(h / cell), math.ceil(w / cell)
    any_valid = np.zeros((gh, gw), dtype=bool) if masked else None
    all_valid = np.zeros((gh, gw), dtype=bool) if masked else None
    itemsize = max(np.dtype(ds.dtypes[b - 1]).itemsize for b in bands)
    pixel_bytes = len(bands) * ((itemsize if stretch or finite_only else 0) + (1 if masked else 0))
    bh = ds.block_shapes[bands[0] - 1][0]
    rows_by_bytes = max(cell, strip_bytes // max(1, w * pixel_bytes))
    strip = max(cell, (min(max(bh, cell), rows_by_bytes) // cell) * cell)
    samples: list[np.ndarray] = []
    sample_valid: list[np.ndarray] = []
    for r0 in range(0, h, strip):
        rows = min(strip, h - r0)
        window = Window(0, r0, w, rows)
        first = (-r0) % f  # first strip row whose scene row is a multiple of f
        data = ds.read(bands, window=window) if (masked and finite_only) or (stretch and first < rows) else None
        valid = valid_mask(ds, bands, window=window, data=data if finite_only else None) if masked else None
        if masked:
            pad_h, pad_w = math.ceil(rows / cell) * cell - rows, gw * cell - w
            g0, g1 = r0 // cell, r0 // cell + math.ceil(rows / cell)
            # Pixels outside the scene count as neither valid (for "any") nor invalid (for "all").
            v_any = np.pad(valid, ((0, pad_h), (0, pad_w)), constant_values=False)
            v_all = np.pad(valid, ((0, pad_h), (0, pad_w)), constant_values=True)
            any_valid[g0:g1] = v_any.reshape(g1 - g0, cell, gw, cell).any(axis=(1, 3))
            all_valid[g0:g1] = v_all.reshape(g1 - g0, cell, gw, cell).all(axis=(1, 3))
        if stretch:
            if first < rows:
                samples.append(data[:, first::f, ::f].reshape(len(bands), -1))
                sample_valid.append(valid[first::f, ::f].ravel() if masked
                                    else np.ones(samples[-1].shape[1], bool))
    result_stretch = None
    if stretch:
        result_stretch = stretch_from_samples(np.concatenate(samples, axis=1), np.concatenate(sample_valid),
                                               percentiles)
    coverage = CoverageMap(cell, any_valid, all_valid) if masked else None
    return result_stretch, coverage


def prepare_read(info: SceneInfo, *, bands: Sequence[int] | None = None, window: int = 1024,
                 resampling: PyramidResampling = "exact", percentiles: tuple[float, float] = (2.0, 98.0),
                 cache_mb: int | None = None, coverage_scan: bool = True) -> tuple[ReadSpec, CoverageMap | None]:
    """The per-scene read description (bands, stretch, cache) and, for masked scenes, its coverage.

    The stretch comes from a sample of the scene's blocks (``serving.engine.stretch``).
    ``coverage_scan=False`` skips the coverage scan (it reads the whole mask): for a reader that finds
    the windows without a valid pixel itself (``serving.engine.pyramid_pass``).
    """
    if resampling not in ("exact", "overview"):
        raise ValueError(f"resampling must be 'exact' or 'overview', got {resampling!r}")
    rgb_bands = select_bands(info, bands)
    read_bands = tuple(dict.fromkeys(rgb_bands))
    rgb = tuple(read_bands.index(b) for b in rgb_bands)
    cache = cache_mb if cache_mb is not None else cache_mb_for(info, read_bands, window)
    needs_stretch = any(info.dtypes[b - 1] != "uint8" for b in read_bands)
    finite_only = has_float_bands(info, read_bands)
    masked = info.masked or finite_only
    stretch, cover = None, None
    scan_coverage = masked and coverage_scan
    if needs_stretch or scan_coverage:
        with CacheHold(cache * 2**20), open_grid(info.uri, info.regrid) as ds:
            if needs_stretch:
                stretch = sample_stretch(ds, read_bands, masked=masked, finite_only=finite_only,
                                         percentiles=percentiles)
            if scan_coverage:
                _, cover = scan_scene(ds, read_bands, stretch=False, masked=True, finite_only=finite_only)
    spec = ReadSpec(info.uri, read_bands, rgb, stretch, resampling, cache, finite_only,  # type: ignore[arg-type]
                    info.regrid)
    return spec, cover


def empty_windows_notice(uri: str, skipped: int, total: int) -> Warning:
    """The notice for ``skipped`` of ``total`` windows without a valid pixel (all: the scene has none)."""
    if skipped >= total:
        return EmptySceneWarning(f"{uri} has no valid pixel (all nodata, masked or NaN): no window to run, "
                                 "no detection")
    return EmptyWindowsWarning(f"{uri}: {skipped} of {total} windows have no valid pixel (nodata, masked or "
                               "NaN) and are not run")


def plan_scene(info: SceneInfo, *, bands: Sequence[int] | None = None, window: int = 1024,
               overlap: int = 200, resampling: PyramidResampling = "exact",
               percentiles: tuple[float, float] = (2.0, 98.0), cache_mb: int | None = None,
               coverage_scan: bool = True, area_px: shapely.Geometry | None = None,
               levels: Sequence[int] | None = None) -> ScenePlan:
    """The pyramid plan of a scene and the reads it needs, with empty windows left out (unless
    ``coverage_scan=False``: every window planned, see ``prepare_read``), and with an area of
    interest (``area_px``, in the scene's pixels) the windows that do not meet it (all of them, with
    an ``OutsideAreaWarning``, when the area lies beside the scene). ``levels``: the pyramid levels
    run (None: all)."""
    spec, coverage = prepare_read(info, bands=bands, window=window, resampling=resampling,
                                  percentiles=percentiles, cache_mb=cache_mb, coverage_scan=coverage_scan)
    # The top level must fit one window, whatever the window size (1024 in the authors' setting).
    plan = plan_pyramid(info.height, info.width, window=window, overlap=overlap, max_side=window,
                        levels=None if levels is None else list(levels))
    inside = np.ones(len(plan), bool) if area_px is None else windows_meeting(area_px, window_footprints(plan))
    items: list[ReadItem] = []
    skipped: list[int] = []
    outside = [i for i in range(len(plan)) if not inside[i]]
    for i, win in enumerate(plan):
        if not inside[i]:
            continue
        # Without a coverage map a masked scene's windows may all be partial.
        state = coverage.classify(win) if coverage is not None else (
            Coverage.PARTIAL if info.masked else Coverage.FULL)
        if state is Coverage.EMPTY:
            skipped.append(i)
        else:
            # A scene masked by NaN alone has nothing in GDAL's mask: window_image tests the values.
            items.append(ReadItem(i, win, needs_mask=state is Coverage.PARTIAL and info.masked))
    notices: list[Warning] = []
    if not inside.any():
        notices.append(OutsideAreaWarning(f"the area of interest does not overlap {info.uri}: nothing was searched"))
    elif not items or skipped:
        notices.append(empty_windows_notice(info.uri, len(skipped), len(plan) - len(outside)))
    if items and info.striped:
        notices.append(StripedSceneWarning(
            f"{info.uri} is striped (blocks {info.block_shapes[0]}), not tiled: reading row by row of "
            "windows; a tiled GeoTIFF / COG reads faster"))
    return ScenePlan(spec, plan, items, skipped, tuple(notices), coverage, outside, area_px)


def window_footprints(plan: Sequence[PlanWindow]) -> np.ndarray:
    """(N, 4) ``x0, y0, x1, y1`` of each window in full-resolution scene pixels."""
    return np.array([(w.col_off * w.scale, w.row_off * w.scale, (w.col_off + w.width) * w.scale,
                      (w.row_off + w.height) * w.scale) for w in plan], np.float64).reshape(-1, 4)


def window_image(spec: ReadSpec, data: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """A window's pixels (C, h, w) in the file's dtype, and its validity (h, w) or None, as the uint8
    (3, h, w) RGB the detector gets: stretched, bands arranged, invalid pixels 0 in every channel.
    With ``spec.finite_only`` a pixel whose selected bands are all NaN or infinite is invalid too (a
    level pixel over a NaN is NaN, so this holds at every level)."""
    if spec.finite_only and data.dtype.kind == "f":
        finite = np.isfinite(data).any(axis=0)
        if not finite.all():
            valid = finite if valid is None else valid & finite
    if spec.stretch is not None:
        img = spec.stretch.apply(data)
    elif data.dtype == np.uint8:
        img = data
    else:  # uint8 scene, resampled level in floating point
        img = np.rint(np.clip(data, 0, 255)).astype(np.uint8)
    if spec.rgb != (0, 1, 2):
        img = img[list(spec.rgb)]
    if valid is not None:
        img = np.where(valid[None], img, np.uint8(0))
    return np.ascontiguousarray(img)


class WindowReader:
    """Reads windows of one scene as uint8 RGB; keeps the dataset open between reads.

    While it is open, the process's GDAL block cache is at least the spec's ``cache_mb``, whichever
    thread or process (a Ray actor) reads.
    """

    mask_chunk_bytes = 32 * 2**20  # full-resolution mask bytes held at once for a coarse window

    def __init__(self, spec: ReadSpec, max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES):
        self.spec = spec
        self.max_chunk_bytes = max_chunk_bytes  # full-resolution bytes behind one chunk of a level read
        self._open = contextlib.ExitStack()
        self._ds = self._open.enter_context(open_grid(spec.uri, spec.regrid))
        self._cache = CacheHold(spec.cache_mb * 2**20)

    @property
    def height(self) -> int:
        return self._ds.height

    @property
    def width(self) -> int:
        return self._ds.width

    def read(self, window: PlanWindow, needs_mask: bool = False) -> np.ndarray:
        """(3, window.height, window.width) uint8."""
        spec = self.spec
        data = read_pyramid_window(self._ds, window, bands=spec.read_bands, resampling=spec.resampling,
                                   max_chunk_bytes=self.max_chunk_bytes)
        valid = self._window_mask(window) if needs_mask else None
        return window_image(spec, data, valid)

    def _window_mask(self, window: PlanWindow) -> np.ndarray:
        """Boolean (h, w) validity of the window's pixels at its level.

        An exact level pixel is the mean of a 2 x 2 block of full-resolution pixels (see
        ``hbdnet.data.raster``): it is valid when all four are, since an invalid one would mix a nodata
        value into it. The mask is read at full resolution in strips of at most ``mask_chunk_bytes``.
        With ``resampling="overview"`` the mask comes, like the pixels, from a decimated read.
        """
        s, ds, bands = window.scale, self._ds, self.spec.read_bands
        x0, y0, w, h = window.col_off * s, window.row_off * s, window.width, window.height
        if s == 1:
            return valid_mask(ds, bands, window=Window(x0, y0, w, h))
        if self.spec.resampling == "overview":
            return valid_mask(ds, bands, window=Window(x0, y0, w * s, h * s), out_shape=(h, w))
        lo = s // 2 - 1
        out = np.empty((h, w), dtype=bool)
        level_rows = max(1, self.mask_chunk_bytes // (len(bands) * s * s * w))
        for r0 in range(0, h, level_rows):
            n = min(level_rows, h - r0)
            full = valid_mask(ds, bands, window=Window(x0, y0 + r0 * s, w * s, n * s)).reshape(n, s, w, s)
            out[r0:r0 + n] = (full[:, lo, :, lo] & full[:, lo, :, lo + 1]
                              & full[:, lo + 1, :, lo] & full[:, lo + 1, :, lo + 1])
        return out

    def close(self) -> None:
        self._open.close()
        self._cache.release()

    def __enter__(self) -> WindowReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_scene_windows(uri: str, *, bands: Sequence[int] | None = None, window: int = 1024,
                       overlap: int = 200, resampling: PyramidResampling = "exact",
                       percentiles: tuple[float, float] = (2.0, 98.0),
                       cache_mb: int | None = None) -> Iterator[tuple[PlanWindow, np.ndarray]]:
    """Lazily yield ``(window, uint8 (3, h, w))`` for the whole pyramid plan of ``uri``.

    Level by level, row-major within a level; windows with no valid pixel are left out.
    """
    info = open_scene(uri)
    scene_plan = plan_scene(info, bands=bands, window=window, overlap=overlap, resampling=resampling,
                            percentiles=percentiles, cache_mb=cache_mb)
    for notice in scene_plan.warnings:
        warnings.warn(notice, stacklevel=2)
    with WindowReader(scene_plan.spec) as reader:
        for item in scene_plan.items:
            yield item.window, reader.read(item.window, item.needs_mask)
