"""How long results are kept (``--keep-results``) and how large the data folder may grow
(``--max-data``): durations as people write them, and the folder's size. The disk of a long-running
server otherwise only grows."""

from __future__ import annotations

import os
import re
from pathlib import Path

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_NAMES = (("week", 7 * 86400), ("day", 86400), ("hour", 3600), ("minute", 60))


def parse_duration(text: str) -> float:
    """Seconds from ``7d``, ``12h``, ``30m``, ``90s``, ``2w`` or a number of seconds; ValueError otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"] if m else 0.0
    if seconds <= 0:
        raise ValueError(f"a duration like 7d, 12h, 30m or 90s (more than 0), got {text[:40]!r}")
    return seconds


def describe_duration(seconds: float) -> str:
    """``7 days``, ``12 hours``, ``90 seconds``: the largest unit that divides it, for messages."""
    for name, size in _NAMES:
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {name}{'s' if n != 1 else ''}"
    return f"{seconds:g} seconds"


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (files that vanish while it is walked count 0)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total
