"""Every window of a scene's exact pyramid from one streaming decode.

``hbdnet.data.raster`` defines level ``k`` (scale ``s = 2**k``): level pixel ``(i, j)`` is the mean of
the four full-resolution pixels at rows ``i*s + s/2 - 1``, ``i*s + s/2`` and columns ``j*s + s/2 - 1``,
``j*s + s/2``. ``read_pyramid_window`` computes it per window, from decimated reads of the window's
whole footprint: each coarse level decodes the scene again, and overlapping windows decode their
overlaps again (6.7 plain decodes for the plan of an 8192 px scene).

``PyramidPass`` decodes the scene once, top to bottom, in strips of full-resolution rows (whole
blocks high, and a multiple of the coarsest scale high, so that the two rows of every level row are
in one strip):

* level-0 windows are cut from the strips, which are kept only until the last level-0 window that
  needs them has been cut;
* each coarser level's rows are computed from the strip as it passes, with the same arithmetic as
  ``read_pyramid_window`` (same accumulator, same order of the four terms, same rounding), and
  appended to that level's ``LevelStore``: an array while the stores fit ``buffer_bytes`` (coarsest
  levels first), else a temporary file (a 64k scene's levels hold a third of its pixels);
* a window (and, for a detector with inter-layer fusion, its coarser context crops) is produced as
  soon as the last row it needs has passed, so the first windows come after one strip, not after a
  scan of the scene.

The validity mask of a masked scene is carried the same way (a level pixel is valid when its four
pixels are, as ``WindowReader`` does), so no coverage scan is needed first: a window without a valid
pixel (GDAL's mask, and for floating-point bands a finite value, ``reader.window_image``'s rule) is
not produced (``stats.skipped``), and the others are masked exactly as ``WindowReader`` masks them.

A thread decodes the next strip while the current one is cut and its windows run (GDAL decodes
without the GIL); the dataset is opened with ``NUM_THREADS`` (every core but one) so GDAL decodes a
strip's tiles in parallel. Peak memory: two strips, the level-0 windows' rows in flight, the in-memory level stores,
and the GDAL block cache held at one strip.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from rasterio.windows import Window

from hbdnet.pyramid import PlanWindow, context_crops, level_size
from serving.engine.ahead import ahead
from serving.engine.gdal_cache import CacheHold
from serving.engine.reader import ReadItem, ReadSpec, window_image
from serving.engine.scene import describe, open_grid
from serving.engine.stretch import valid_mask

# Level stores held in memory; the rest go to temporary files, read back through the page cache at
# no measurable cost: memory is worth more to the model (a 16k scene's level 2 is 50 MB).
DEFAULT_BUFFER_BYTES = 32 * 2**20
DEFAULT_STRIP_BYTES = 8 * 2**20  # full-resolution bytes decoded at once (at least one block row)
_CHUNK_BYTES = 2**20  # temporaries of a level's sums, computed a few rows at a time


@dataclass(frozen=True)
class PassConfig:
    """Memory settings of a pass. ``decode_threads``: GDAL's ``NUM_THREADS`` open option ("ALL_CPUS"
    or a number) for decoding the tiles of a strip in parallel (default: every core but one, which
    cuts windows and computes levels meanwhile); ``temp_dir``: where level stores that do not fit
    ``buffer_bytes`` go (default: the system's temporary folder)."""

    buffer_bytes: int = DEFAULT_BUFFER_BYTES
    strip_bytes: int = DEFAULT_STRIP_BYTES
    decode_threads: str | None = None  # None: one core fewer than the machine's, for the cutting thread
    temp_dir: str | None = None
    read_ahead: bool = True


# --- the arithmetic of a level -------------------------------------------------------------------------

def accumulator(dtype: np.dtype) -> type:
    """The type ``read_pyramid_window`` sums four pixels in: exact for integers, float64 for floats."""
    if np.issubdtype(dtype, np.integer):
        return np.int32 if dtype.itemsize <= 2 else np.int64
    return np.float64


def level_row_count(n: int, y0: int, s: int, height: int) -> int:
    """How many rows of a level ``height`` high a strip of ``n`` rows from row ``y0`` completes."""
    return max(0, min(height - y0 // s, len(range(s // 2, n, s))))


def level_rows(strip: np.ndarray, y0: int, s: int, height: int, width: int,
               phase_order: bool, out: np.ndarray | None = None) -> np.ndarray:
    """The rows of level ``s`` (``height`` x ``width``) whose source rows lie in ``strip``.

    ``strip`` is (C, n, W) full-resolution rows from row ``y0``, a multiple of ``s``. Returns
    (C, m, width) in the strip's dtype, level rows ``y0 // s`` onwards, equal to what
    ``read_pyramid_window`` computes. Integer sums are exact, so they are formed in the fastest order
    (the row pair first, over whole contiguous rows; uint8 in uint16). Float sums are formed in the
    reference's order, so that they round the same way: ``phase_order`` for its phase reads (files
    without overviews), else its strip reads. ``out``: where to write them (a level store's rows).
    """
    if y0 % s:
        raise ValueError(f"strip start {y0} is not a multiple of the scale {s}")
    m = level_row_count(strip.shape[1], y0, s, height)
    lo, hi = s // 2 - 1, s // 2
    r_lo, r_hi = strip[:, lo::s][:, :m], strip[:, hi::s][:, :m]
    if np.issubdtype(strip.dtype, np.integer):
        acc = np.uint16 if strip.dtype == np.uint8 else accumulator(strip.dtype)
        out = np.empty((strip.shape[0], m, width), strip.dtype) if out is None else out
        # A few rows at a time, so that the temporaries stay in the CPU's cache (and memory flat).
        step = max(1, _CHUNK_BYTES // max(1, strip.shape[0] * strip.shape[2] * np.dtype(acc).itemsize))
        for r in range(0, m, step):
            pair = np.add(r_lo[:, r:r + step], r_hi[:, r:r + step], dtype=acc)
            total = np.add(pair[:, :, lo::s][:, :, :width], pair[:, :, hi::s][:, :, :width])
            total += 2
            # floor(total / 4 + 0.5), as cv2; an arithmetic shift floors negative sums too.
            np.right_shift(total, 2, out=out[:, r:r + step], casting="unsafe")
        return out
    terms = {(r, c): rows[:, :, col::s][:, :, :width]
             for r, rows in (("lo", r_lo), ("hi", r_hi)) for c, col in (("lo", lo), ("hi", hi))}
    order = ([("hi", "hi"), ("lo", "hi"), ("hi", "lo"), ("lo", "lo")] if phase_order
             else [("lo", "lo"), ("lo", "hi"), ("hi", "lo"), ("hi", "hi")])
    total = terms[order[0]].astype(np.float64)
    for key in order[1:]:
        total += terms[key]
    total /= 4
    if out is None:
        return total.astype(strip.dtype)
    np.copyto(out, total, casting="unsafe")  # the same rounding to the file's type as astype
    return out


def level_valid(valid: np.ndarray, y0: int, s: int, height: int, width: int) -> np.ndarray:
    """Validity of the level rows of ``level_rows``: all four source pixels valid."""
    m = level_row_count(valid.shape[0], y0, s, height)
    lo, hi = s // 2 - 1, s // 2
    out = valid[lo::s][:m, lo::s][:, :width] & valid[hi::s][:m, lo::s][:, :width]
    out &= valid[lo::s][:m, hi::s][:, :width]
    out &= valid[hi::s][:m, hi::s][:, :width]
    return out


def rows_needed(win: PlanWindow) -> int:
    """Full-resolution rows that must have been decoded (from the top) before ``win`` can be cut."""
    s = win.scale
    if s == 1:
        return win.row_off + win.height
    return (win.row_off + win.height - 1) * s + s // 2 + 1


# --- level stores ---------------------------------------------------------------------------------------

class LevelStore:
    """One level's pixels (and validity), filled row by row from the top, read by windows.

    In memory, or (``path`` given) in raw temporary files, one per band (rows, width) and one for the
    validity, appended to and read back through short-lived memory maps, so only a window's pages are
    ever mapped.
    """

    def __init__(self, scale: int, height: int, width: int, bands: int, dtype: np.dtype, masked: bool,
                 path: str | None = None):
        self.scale, self.height, self.width, self.bands = scale, height, width, bands
        self.dtype = np.dtype(dtype)
        self.masked = masked
        self.rows = 0  # rows filled so far
        self.path = path
        if path is None:
            self._data = np.empty((bands, height, width), self.dtype)
            self._valid = np.empty((height, width), bool) if masked else None
        else:
            self._paths = [f"{path}.b{b}" for b in range(bands)] + ([f"{path}.valid"] if masked else [])
            self._files = [open(p, "wb") for p in self._paths]

    @staticmethod
    def nbytes_for(height: int, width: int, bands: int, dtype: np.dtype, masked: bool) -> int:
        return height * width * (bands * np.dtype(dtype).itemsize + (1 if masked else 0))

    def next_rows(self, m: int) -> np.ndarray | None:
        """The in-memory rows that the next ``append`` of ``m`` rows fills, to compute them in place
        (None for a store in a file)."""
        return self._data[:, self.rows:self.rows + m] if self.path is None else None

    def append(self, data: np.ndarray, valid: np.ndarray | None) -> None:
        """Add rows (C, m, width) below those already there (``data`` may be ``next_rows``' view)."""
        m = data.shape[1]
        if self.path is None:
            target = self._data[:, self.rows:self.rows + m]
            if not np.shares_memory(target, data):
                target[...] = data
            if self._valid is not None:
                self._valid[self.rows:self.rows + m] = valid
        else:
            for f, rows in zip(self._files, [*data, *([valid] if self.masked else [])]):
                f.write(np.ascontiguousarray(rows).data)
        self.rows += m

    def _map(self, path: str, dtype: np.dtype, r0: int, h: int, c0: int, w: int) -> np.ndarray:
        mm = np.memmap(path, dtype, "r", shape=(self.rows, self.width))
        try:
            return np.array(mm[r0:r0 + h, c0:c0 + w])
        finally:
            del mm

    def window(self, win: PlanWindow) -> tuple[np.ndarray, np.ndarray | None]:
        """(C, h, w) pixels and (h, w) validity (None for an unmasked scene) of ``win``."""
        r0, c0, h, w = win.row_off, win.col_off, win.height, win.width
        if r0 + h > self.rows:
            raise RuntimeError(f"level rows up to {r0 + h} asked for, {self.rows} filled so far")
        if self.path is None:
            valid = self._valid[r0:r0 + h, c0:c0 + w].copy() if self._valid is not None else None
            return self._data[:, r0:r0 + h, c0:c0 + w].copy(), valid
        for f in self._files:
            f.flush()
        data = np.stack([self._map(p, self.dtype, r0, h, c0, w) for p in self._paths[:self.bands]])
        valid = self._map(self._paths[-1], np.dtype(bool), r0, h, c0, w) if self.masked else None
        return data, valid

    def close(self) -> None:
        if self.path is None:
            self._data = self._valid = None  # type: ignore[assignment]
            return
        for f, p in zip(self._files, self._paths):
            f.close()
            if os.path.exists(p):
                os.remove(p)


# --- the pass -------------------------------------------------------------------------------------------

@dataclass
class _Strip:
    y0: int
    data: np.ndarray  # (C, n, W) in the file's dtype
    valid: np.ndarray | None  # (n, W)

    @property
    def y1(self) -> int:
        return self.y0 + self.data.shape[1]


@dataclass
class PassStats:
    decoded_rows: int = 0
    strips: int = 0
    max_rows_held: int = 0  # full-resolution rows held at once for level-0 windows
    skipped: list[int] = field(default_factory=list)  # plan indexes of windows with no valid pixel
    store_bytes_in_memory: int = 0
    store_bytes_on_disk: int = 0


class PyramidPass:
    """The windows of ``items`` as uint8 RGB, from one decode of ``spec``'s scene (module docstring).

    ``masked`` (default: from the file, as ``SceneInfo.masked``): carry validity masks.
    Iterate to get ``(item, image)`` in the order their rows complete (not plan order). ``read``
    serves any window whose rows have passed (context crops). ``context_levels`` / ``context_size``:
    the coarser crops a fusing detector reads around each level-0 window; a level-0 item is produced
    only once they are readable too.
    """

    def __init__(self, spec: ReadSpec, items: Sequence[ReadItem], *, masked: bool | None = None,
                 context_levels: int = 0, context_size: int = 1024, config: PassConfig = PassConfig()):
        if spec.resampling != "exact":
            raise ValueError("the one-pass reader builds the exact pyramid; use WindowReader for 'overview'")
        self.spec, self.config = spec, config
        self.context_levels, self.context_size = context_levels, context_size
        self.stats = PassStats()
        with open_grid(spec.uri, spec.regrid) as ds:
            self.height, self.width = ds.height, ds.width
            self.dtype = np.dtype(ds.dtypes[spec.read_bands[0] - 1])
            self._block_rows = ds.block_shapes[spec.read_bands[0] - 1][0]
            self._file_bands = ds.count
            self._phase_order = not any(ds.overviews(b) for b in spec.read_bands)
            self.masked = describe(ds, spec.uri).masked if masked is None else masked
        # Each item with the full-resolution rows it waits for (its own and its context crops').
        self._queue = sorted(((self._ready_row(it), n, it) for n, it in enumerate(items)), key=lambda t: t[:2])
        scales = {w.scale for _, _, it in self._queue for w in self._windows_of(it)} | {1}
        self.max_scale = max(scales)
        for s in scales:
            if level_size(self.height, s) * s > self.height or level_size(self.width, s) * s > self.width:
                raise ValueError(f"scale {s} is larger than the scene ({self.width} x {self.height} px)")
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.stores = self._make_stores(sorted(s for s in scales if s > 1))
        self._strips: deque[_Strip] = deque()

    # -- planning

    def _windows_of(self, item: ReadItem) -> list[PlanWindow]:
        wins = [item.window]
        if self.context_levels and item.window.level == 0:
            wins += [c.window for c in context_crops(item.window, self.height, self.width,
                                                     self.context_levels, self.context_size)]
        return wins

    def _ready_row(self, item: ReadItem) -> int:
        return max(rows_needed(w) for w in self._windows_of(item))

    def _make_stores(self, scales: list[int]) -> dict[int, LevelStore]:
        """Coarsest levels in memory while they fit ``buffer_bytes``; the rest in temporary files."""
        stores: dict[int, LevelStore] = {}
        used = 0
        c = len(self.spec.read_bands)
        for s in sorted(scales, reverse=True):
            h, w = level_size(self.height, s), level_size(self.width, s)
            nbytes = LevelStore.nbytes_for(h, w, c, self.dtype, self.masked)
            path = None
            if used + nbytes > self.config.buffer_bytes:
                if self._tmp is None:
                    self._tmp = tempfile.TemporaryDirectory(prefix="hbdnet-pyramid-", dir=self.config.temp_dir)
                path = os.path.join(self._tmp.name, f"level_{s}.raw")
                self.stats.store_bytes_on_disk += nbytes
            else:
                used += nbytes
                self.stats.store_bytes_in_memory += nbytes
            stores[s] = LevelStore(s, h, w, c, self.dtype, self.masked, path)
        return stores

    def strip_rows(self) -> int:
        """Rows per decoded strip: whole blocks, a multiple of the coarsest scale, about ``strip_bytes``."""
        unit = math.lcm(self._block_rows, self.max_scale)
        row_bytes = self.width * self._file_bands * self.dtype.itemsize
        return unit * max(1, self.config.strip_bytes // max(1, unit * row_bytes))

    # -- decoding

    def _decode(self) -> Iterator[_Strip]:
        """The scene's strips, top to bottom, with their validity for a masked scene."""
        rows = self.strip_rows()
        bands = list(self.spec.read_bands)
        # Every block is decoded once: the cache holds a strip's blocks (all of the file's bands and a
        # mask), so that a nodata mask read after the pixels finds them decoded, and not the scene
        # (GDAL's default cache is 5 % of the machine's RAM).
        strip_bytes = rows * self.width * (self._file_bands * self.dtype.itemsize + 1)
        with CacheHold(int(strip_bytes * 1.1) + 8 * 2**20), \
                open_grid(self.spec.uri, self.spec.regrid, NUM_THREADS=self._decode_threads()) as ds:
            for y0 in range(0, self.height, rows):
                window = Window(0, y0, self.width, min(rows, self.height - y0))
                data = ds.read(bands, window=window)
                valid = valid_mask(ds, bands, window=window) if self.masked else None
                yield _Strip(y0, data, valid)

    def _decode_threads(self) -> str:
        if self.config.decode_threads is not None:
            return self.config.decode_threads
        return str(max(1, (os.cpu_count() or 2) - 1))

    def _strips_ahead(self) -> Iterator[_Strip]:
        """``_decode`` on a thread, one strip ahead of the consumer."""
        if not self.config.read_ahead:
            yield from self._decode()
            return
        yield from ahead(self._decode(), depth=1, name="hbdnet-pass-decode")

    def _take(self, strip: _Strip) -> None:
        """Add a decoded strip: keep it for level-0 windows, add its rows to every level store."""
        self.stats.decoded_rows += strip.data.shape[1]
        self.stats.strips += 1
        self._strips.append(strip)
        held = self._strips[-1].y1 - self._strips[0].y0
        self.stats.max_rows_held = max(self.stats.max_rows_held, held)
        for s, store in self.stores.items():
            m = level_row_count(strip.data.shape[1], strip.y0, s, store.height)
            if not m:
                continue
            # An in-memory store is written in place (no copy of the level's rows).
            rows = level_rows(strip.data, strip.y0, s, store.height, store.width, self._phase_order,
                              out=store.next_rows(m))
            valid = level_valid(strip.valid, strip.y0, s, store.height, store.width) if self.masked else None
            store.append(rows, valid)

    def _drop_strips(self, next_row0: int) -> None:
        """Forget strips above ``next_row0``, the first row a level-0 window still to come needs."""
        while self._strips and self._strips[0].y1 <= next_row0:
            self._strips.popleft()

    # -- windows

    def window_data(self, win: PlanWindow) -> tuple[np.ndarray, np.ndarray | None]:
        """(C, h, w) pixels in the file's dtype and (h, w) validity of ``win``, if its rows have passed."""
        if win.scale > 1:
            return self.stores[win.scale].window(win)
        r0, r1, c0, c1 = win.row_off, win.row_off + win.height, win.col_off, win.col_off + win.width
        parts = [st for st in self._strips if st.y0 < r1 and st.y1 > r0]
        if not parts or parts[0].y0 > r0 or parts[-1].y1 < r1:
            raise RuntimeError(f"level-0 rows {r0}..{r1} are not held (pass order)")
        data = np.concatenate([st.data[:, max(r0, st.y0) - st.y0:min(r1, st.y1) - st.y0, c0:c1] for st in parts],
                              axis=1)
        valid = None
        if self.masked:
            valid = np.concatenate([st.valid[max(r0, st.y0) - st.y0:min(r1, st.y1) - st.y0, c0:c1]
                                    for st in parts])
        return data, valid

    def _any_valid(self, data: np.ndarray, valid: np.ndarray | None) -> bool:
        """Whether the window has a valid pixel, by ``window_image``'s rule (a pixel whose selected
        floating-point bands are all NaN or infinite is invalid, as nodata is)."""
        if self.spec.finite_only and data.dtype.kind == "f":
            finite = np.isfinite(data).any(axis=0)
            valid = finite if valid is None else valid & finite
        return valid is None or bool(valid.any())

    def read(self, win: PlanWindow, needs_mask: bool = True) -> np.ndarray:
        """uint8 (3, h, w) of ``win``, as ``WindowReader.read`` gives it."""
        data, valid = self.window_data(win)
        return window_image(self.spec, data, valid)

    def __iter__(self) -> Iterator[tuple[ReadItem, np.ndarray]]:
        pending = deque(self._queue)
        level0 = deque(it.window.row_off for _, _, it in self._queue if it.window.level == 0)
        try:
            for strip in self._strips_ahead():
                self._take(strip)
                while pending and pending[0][0] <= strip.y1:
                    _, _, item = pending.popleft()
                    data, valid = self.window_data(item.window)
                    if item.window.level == 0:
                        level0.popleft()
                    if not self._any_valid(data, valid):
                        self.stats.skipped.append(item.index)
                        continue
                    yield item, window_image(self.spec, data, valid)
                self._drop_strips(min(level0) if level0 else self.height)
            if pending:
                raise RuntimeError(f"{len(pending)} windows were not reached by the pass")
        finally:
            self._strips.clear()

    def close(self) -> None:
        for store in self.stores.values():
            store.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> PyramidPass:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
