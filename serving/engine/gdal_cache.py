"""The process's GDAL block cache, held at the size that the open readers need.

GDAL has one block cache per process. ``rasterio.Env(GDAL_CACHEMAX=...)`` sets it on entry and puts
back the value it found on exit, which is right for one thread and wrong for several: when one
reading thread leaves its Env it restores GDAL's default (5 % of the machine's RAM) while another
thread is still reading, and the cache grows past the budget (measured with two read threads on a
16384 px scene: 643 MB peak instead of 527 MB). So readers do not set the cache per read. Each open
reader holds a ``CacheHold`` for the bytes it needs; the cache is the largest of the holds, and goes
back to what it was before the first hold when the last one is released.
"""

from __future__ import annotations

import itertools
import threading

from rasterio.env import get_gdal_config, set_gdal_config

_lock = threading.Lock()
_holds: dict[int, int] = {}  # hold id -> bytes
_before: int | None = None  # the cache size before the first open hold
_ids = itertools.count()


def cache_bytes() -> int | None:
    """GDAL's block cache size in bytes now (rasterio reports the effective value)."""
    value = get_gdal_config("GDAL_CACHEMAX")
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _apply() -> None:
    """Set the cache to the largest hold, or back to the size found before the holds."""
    target = max(_holds.values()) if _holds else _before
    if target is not None and target != cache_bytes():
        # An integer goes to GDALSetCacheMax64, in bytes (the environment variable's small
        # numbers would mean MB); the call is process-wide and shrinking it evicts blocks.
        set_gdal_config("GDAL_CACHEMAX", int(target))


class CacheHold:
    """A reader's claim on ``nbytes`` of GDAL block cache, until ``release``."""

    def __init__(self, nbytes: int):
        global _before
        self.nbytes = int(nbytes)
        with _lock:
            if not _holds:
                _before = cache_bytes()
            self._id = next(_ids)
            _holds[self._id] = self.nbytes
            _apply()

    def release(self) -> None:
        with _lock:
            if _holds.pop(self._id, None) is not None:
                _apply()

    def __enter__(self) -> CacheHold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
