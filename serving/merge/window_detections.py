"""Detections of one pyramid window, and their mapping to full-resolution scene pixels.

A worker returns boxes in the pixels of the window it ran on (level pixels, origin at the window's
top-left corner). The merge works in full-resolution scene pixels, so every box is moved by the
window's offset and multiplied by the level's scale; the angle does not change under a uniform
scale. This is the authors' relocation (``x += x_start; (x, y, w, h) *= 2**k``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hbdnet.pyramid import PlanWindow


@dataclass(frozen=True)
class WindowDetections:
    """What a model worker found in one window.

    ``boxes`` is ``(N, 5)`` ``le90`` rows ``(cx, cy, w, h, theta)`` in window pixels of the window's
    level; ``scores`` is ``(N,)``; ``labels`` is ``(N,)`` integer class indices.
    """

    window: PlanWindow
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.boxes)
        if np.shape(self.boxes) not in ((n, 5), (0,)) or len(self.scores) != n or len(self.labels) != n:
            raise ValueError(
                f"boxes must be (N, 5) with N scores and labels, got {np.shape(self.boxes)}, "
                f"{np.shape(self.scores)}, {np.shape(self.labels)}"
            )


@dataclass(frozen=True)
class SceneDetections:
    """Detections of many windows in full-resolution scene pixels, one row per detection.

    ``boxes`` ``(N, 5)`` float64 ``le90``; ``scores`` ``(N,)`` float64; ``labels`` ``(N,)`` int64;
    ``levels`` ``(N,)`` int64, the pyramid level whose window produced the box; ``window_bounds``
    ``(N, 4)`` float64 ``(x0, y0, x1, y1)``, that window's footprint in scene pixels, or None when
    unknown (it tells the merge which box ends are cuts by a window border rather than bridge ends).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    levels: np.ndarray
    window_bounds: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)

    @staticmethod
    def empty() -> SceneDetections:
        return SceneDetections(
            np.zeros((0, 5)), np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64),
            np.zeros((0, 4)),
        )


def to_scene(dets: Sequence[WindowDetections]) -> SceneDetections:
    """Concatenate window detections and map them to full-resolution scene pixels.

    ``(cx, cy) -> ((cx + col_off) * scale, (cy + row_off) * scale)``, ``(w, h) -> (w, h) * scale``,
    ``theta`` unchanged. One concatenation and one vectorised affine map for all windows. Each row
    also gets its level and its window's footprint.
    """
    dets = [d for d in dets if len(d.scores)]
    if not dets:
        return SceneDetections.empty()
    counts = np.array([len(d.scores) for d in dets])
    boxes = np.concatenate([np.asarray(d.boxes, dtype=np.float64).reshape(-1, 5) for d in dets])
    # Per-window (col_off, row_off, scale, level), repeated to one row per detection.
    per_window = np.array(
        [(d.window.col_off, d.window.row_off, d.window.scale, d.window.level) for d in dets],
        dtype=np.float64,
    )
    col_off, row_off, scale, level = np.repeat(per_window, counts, axis=0).T
    scene = np.empty_like(boxes)
    scene[:, 0] = (boxes[:, 0] + col_off) * scale
    scene[:, 1] = (boxes[:, 1] + row_off) * scale
    scene[:, 2] = boxes[:, 2] * scale
    scene[:, 3] = boxes[:, 3] * scale
    scene[:, 4] = boxes[:, 4]
    return SceneDetections(
        boxes=scene,
        scores=np.concatenate([np.asarray(d.scores, dtype=np.float64) for d in dets]),
        labels=np.concatenate([np.asarray(d.labels, dtype=np.int64) for d in dets]),
        levels=level.astype(np.int64),
        window_bounds=np.repeat(np.array([d.window.scene_bounds() for d in dets], float), counts, axis=0),
    )
