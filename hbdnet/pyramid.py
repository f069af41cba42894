"""The dynamic image pyramid as a plan: a pure function from scene size to the windows to run.

Level 0 is the full-resolution scene; level k is the scene resampled by 1 / 2**k (bilinear, from full
resolution). Levels are added until the longer side is at most ``max_side``, so the top level fits one
window. Non-square scenes are handled on both axes (the authors' code used only the width).
Every level is cut into ``window`` px windows that overlap by ``overlap`` px; the last window on an axis
is moved back to end at the border, and a level smaller than a window gets one window of its own size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PyramidLevel:
    index: int
    scale: int  # full-resolution pixels per level pixel (2**index)
    height: int
    width: int


@dataclass(frozen=True)
class PlanWindow:
    """One window of one level, in that level's pixels."""

    level: int
    scale: int
    col_off: int
    row_off: int
    width: int
    height: int

    def scene_bounds(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the window's footprint in full-resolution scene pixels."""
        s = self.scale
        return (self.col_off * s, self.row_off * s, (self.col_off + self.width) * s,
                (self.row_off + self.height) * s)


def level_size(side: int, scale: int) -> int:
    """Side of a level, as ``F.interpolate(scale_factor=1/scale)`` and cv2.resize produce it."""
    return max(1, math.floor(side / scale))


def pyramid_levels(height: int, width: int, max_side: int = 1024) -> list[PyramidLevel]:
    if height < 1 or width < 1:
        raise ValueError(f"scene size must be positive, got {height} x {width}")
    levels = [PyramidLevel(0, 1, height, width)]
    while max(levels[-1].height, levels[-1].width) > max_side:
        k = levels[-1].index + 1
        s = 2**k
        levels.append(PyramidLevel(k, s, level_size(height, s), level_size(width, s)))
    return levels


def window_starts(side: int, window: int = 1024, overlap: int = 200) -> list[int]:
    """Start offsets on one axis: step ``window - overlap``, the last one clamped to end at ``side``."""
    if side <= window:
        return [0]
    step = window - overlap
    n = math.ceil((side - window) / step + 1)
    return [min(i * step, side - window) for i in range(n)]


def plan_pyramid(
    height: int,
    width: int,
    window: int = 1024,
    overlap: int = 200,
    max_side: int = 1024,
    levels: list[int] | None = None,
) -> list[PlanWindow]:
    """All windows of all levels, level by level, row-major within a level.

    ``levels`` restricts the plan to those level indices (e.g. ``[0]`` for plain sliding windows).
    """
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window), got {overlap} for window {window}")
    plan: list[PlanWindow] = []
    for lv in pyramid_levels(height, width, max_side):
        if levels is not None and lv.index not in levels:
            continue
        ww, wh = min(window, lv.width), min(window, lv.height)
        for row in window_starts(lv.height, window, overlap):
            for col in window_starts(lv.width, window, overlap):
                plan.append(PlanWindow(lv.index, lv.scale, col, row, ww, wh))
    return plan
