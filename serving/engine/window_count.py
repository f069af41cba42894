"""How many windows the dynamic pyramid of a scene has: the one count that ``hbdnet plan`` prints and
the service prices a job by before accepting it (issue 19). Counted per axis, never listed: a huge
scene with a small window has more windows than memory."""

from __future__ import annotations

from collections.abc import Sequence

from hbdnet.pyramid import PyramidLevel, pyramid_levels, window_starts


def windows_per_level(height: int, width: int, window: int, overlap: int) -> list[tuple[PyramidLevel, int]]:
    """Each pyramid level of a ``width`` x ``height`` scene with its number of windows."""
    return [(lv, len(window_starts(lv.height, window, overlap)) * len(window_starts(lv.width, window, overlap)))
            for lv in pyramid_levels(height, width, window)]


def count_windows(height: int, width: int, window: int, overlap: int, levels: Sequence[int] | None = None) -> int:
    """The windows of every level of the scene's pyramid, or of ``levels`` (the plan before empty
    windows are left out)."""
    return sum(n for lv, n in windows_per_level(height, width, window, overlap) if levels is None or lv.index in levels)
