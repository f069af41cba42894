"""GDAL's own reasons for a failed open, which rasterio does not pass on.

When GDAL fails to open a URL it signals the cause first ("Range downloading not supported by this
server!", an HTTP error) and then a generic "not recognized as being in a supported file format";
rasterio raises only the last one and logs the others (logger ``rasterio._env``, level INFO, usually
off). ``collecting()`` gathers, for the calling thread only, the messages GDAL signals meanwhile, so
that ``serving.engine.scene.open_raster`` can say the real reason. Logging output is left as it was:
records below the level the logger had before are still dropped. ``first_line`` is what every
one-line error of hbdnet says of an exception.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_LOGGER = "rasterio._env"
_PREFIX = "GDAL signalled an error"
_local = threading.local()
_installed = threading.Lock()
_filter: _Collector | None = None


class _Collector(logging.Filter):
    """On ``rasterio._env``: hands GDAL's error messages to the thread collecting them, and lets a
    record through only at the level the logger let through before it was installed."""

    def __init__(self, level_before: int):
        super().__init__()
        self.level_before = level_before

    def filter(self, record: logging.LogRecord) -> bool:
        found: list[str] | None = getattr(_local, "messages", None)
        if found is not None and str(record.msg).startswith(_PREFIX) and isinstance(record.args, tuple) \
                and len(record.args) == 2:
            found.append(str(record.args[1]).strip())
        return record.levelno >= self.level_before


def _install() -> None:
    global _filter
    with _installed:
        if _filter is not None:
            return
        logger = logging.getLogger(_LOGGER)
        _filter = _Collector(logger.getEffectiveLevel())
        logger.addFilter(_filter)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)


@contextmanager
def collecting() -> Iterator[list[str]]:
    """The messages GDAL signals in this thread inside the block, oldest first."""
    _install()
    outer = getattr(_local, "messages", None)
    _local.messages = found = []
    try:
        yield found
    finally:
        _local.messages = outer


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its type's name when it has none."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
