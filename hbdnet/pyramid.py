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


def validate_window(window: int, overlap: int) -> None:
    """``ValueError`` (one line) unless ``window >= 1`` and ``0 <= overlap < window``."""
    if window < 1:
        raise ValueError(f"window must be 1 px or more, got {window}")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window), got {overlap} for window {window}")


def pyramid_levels(height: int, width: int, max_side: int = 1024) -> list[PyramidLevel]:
    if height < 1 or width < 1:
        raise ValueError(f"scene size must be positive, got {width} x {height} (width x height)")
    if max_side < 1:  # the levels would never get small enough
        raise ValueError(f"max_side must be 1 px or more, got {max_side}")
    levels = [PyramidLevel(0, 1, height, width)]
    while max(levels[-1].height, levels[-1].width) > max_side:
        k = levels[-1].index + 1
        s = 2**k
        levels.append(PyramidLevel(k, s, level_size(height, s), level_size(width, s)))
    return levels


def window_starts(side: int, window: int = 1024, overlap: int = 200) -> list[int]:
    """Start offsets on one axis: step ``window - overlap``, the last one clamped to end at ``side``."""
    validate_window(window, overlap)
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
    max_side: int | None = None,
    levels: list[int] | None = None,
) -> list[PlanWindow]:
    """All windows of all levels, level by level, row-major within a level.

    ``max_side`` (default: the window size) is where the pyramid stops: the top level fits one window.
    ``levels`` restricts the plan to those level indices (e.g. ``[0]`` for plain sliding windows).
    """
    validate_window(window, overlap)
    plan: list[PlanWindow] = []
    for lv in pyramid_levels(height, width, window if max_side is None else max_side):
        if levels is not None and lv.index not in levels:
            continue
        ww, wh = min(window, lv.width), min(window, lv.height)
        for row in window_starts(lv.height, window, overlap):
            for col in window_starts(lv.width, window, overlap):
                plan.append(PlanWindow(lv.index, lv.scale, col, row, ww, wh))
    return plan


@dataclass(frozen=True)
class ContextCrop:
    """A coarser level's window centred on a finer window, for inter-layer feature fusion (IFF).

    ``rel_box`` is the finer window's footprint inside this crop as fractions of the crop's nominal
    ``size`` x ``size`` extent (left, top, right, bottom); a level smaller than ``size`` gives a crop of
    the whole level, padded on the bottom/right by whoever reads it.
    """

    window: PlanWindow
    rel_box: tuple[float, float, float, float]


def context_crops(win: PlanWindow, height: int, width: int, count: int, size: int = 1024) -> list[ContextCrop]:
    """The ``count`` coarser-level crops co-located with ``win`` (levels win.level + 1 ... + count).

    As in the authors' data pipeline (method doc section 4.1): each crop is ``size`` px, centred on the
    window's footprint, and moved inside the level where it would stick out. Levels beyond the top of
    the pyramid are still produced (the footprint just gets smaller), so every window gets ``count``
    crops and the fusion sees the same inputs everywhere.
    """
    crops = []
    x0, y0, x1, y1 = win.scene_bounds()
    for r in range(1, count + 1):
        s = win.scale * 2**r
        lw, lh = level_size(width, s), level_size(height, s)
        cw, ch = min(size, lw), min(size, lh)
        fx0, fy0, fx1, fy1 = x0 / s, y0 / s, x1 / s, y1 / s
        col = min(max(round((fx0 + fx1) / 2 - size / 2), 0), lw - cw)
        row = min(max(round((fy0 + fy1) / 2 - size / 2), 0), lh - ch)
        rel = ((fx0 - col) / size, (fy0 - row) / size, (fx1 - col) / size, (fy1 - row) / size)
        crops.append(ContextCrop(PlanWindow(win.level + r, s, col, row, cw, ch), rel))
    return crops
