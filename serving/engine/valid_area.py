"""Scene boxes kept to the scene's valid pixels, once, after the merge.

Windows smaller than the detector's input are padded, and windows at a nodata edge hold invalid
pixels set to 0: a detector may report boxes there. After the merge (``serving.detect.finish``):

* a box whose centre lies outside the scene, or on an invalid pixel (nodata, masked, NaN: the
  reader's rule, ``serving.engine.reader.valid_at``), is dropped;
* a box that overhangs the scene is clipped to it: cut to the part inside the scene and given the
  smallest box of the same orientation around that part (exact for an axis-aligned box; a tilted
  box crossing a border keeps its angle, so its new corners may lie a little outside where the
  border cuts it obliquely). Its width and height are then put back in le90 order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely

from serving.engine.reader import CoverageMap, ReadSpec, valid_at
from serving.engine.scene import SceneInfo


@dataclass(frozen=True)
class Kept:
    """``keep`` (N,) boolean over the input boxes; ``boxes`` (keep.sum(), 5) the kept ones, clipped."""

    keep: np.ndarray
    boxes: np.ndarray
    clipped: int  # kept boxes that overhung the scene


def corners(boxes: np.ndarray) -> np.ndarray:
    """``(N, 5)`` (cx, cy, w, h, theta) to ``(N, 4, 2)`` corners."""
    cx, cy, w, h, t = boxes.T
    cos, sin = np.cos(t), np.sin(t)
    ux, uy = w / 2 * cos, w / 2 * sin
    vx, vy = -h / 2 * sin, h / 2 * cos
    return np.stack([np.stack([cx - ux - vx, cy - uy - vy], -1), np.stack([cx + ux - vx, cy + uy - vy], -1),
                     np.stack([cx + ux + vx, cy + uy + vy], -1), np.stack([cx - ux + vx, cy - uy + vy], -1)], 1)


def clip_to_scene(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (centres inside the scene) clipped to ``[0, width] x [0, height]`` (see the module
    docstring); returns the boxes and a boolean (N,) of those that overhung."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5).copy()
    pts = corners(boxes)
    eps = 1e-6
    over = ((pts[..., 0] < -eps) | (pts[..., 0] > width + eps)
            | (pts[..., 1] < -eps) | (pts[..., 1] > height + eps)).any(axis=1)
    idx = np.flatnonzero(over)
    if idx.size:
        polygons = shapely.polygons(np.concatenate([pts[idx], pts[idx, :1]], axis=1))
        inside = shapely.intersection(polygons, shapely.box(0.0, 0.0, float(width), float(height)))
        xy, owner = shapely.get_coordinates(inside, return_index=True)
        for k, i in enumerate(idx):
            cx, cy, _, _, t = boxes[i]
            part = xy[owner == k]
            if not len(part):  # cannot happen for a centre inside the scene; keep the box as it was
                continue
            ax = np.array([math.cos(t), math.sin(t)])
            ay = np.array([-math.sin(t), math.cos(t)])
            u, v = (part - (cx, cy)) @ ax, (part - (cx, cy)) @ ay
            centre = np.array([cx, cy]) + (u.min() + u.max()) / 2 * ax + (v.min() + v.max()) / 2 * ay
            boxes[i, :4] = (centre[0], centre[1], u.max() - u.min(), v.max() - v.min())
        boxes[idx] = _le90(boxes[idx])
    return boxes, over


def _le90(boxes: np.ndarray) -> np.ndarray:
    """Rows in le90 form: w >= h, theta in [-pi/2, pi/2)."""
    out = boxes.copy()
    swap = out[:, 2] < out[:, 3]
    out[swap, 2], out[swap, 3] = boxes[swap, 3], boxes[swap, 2]
    t = np.where(swap, boxes[:, 4] + math.pi / 2, boxes[:, 4])
    t = np.remainder(t + math.pi / 2, math.pi) - math.pi / 2
    out[:, 4] = np.where(t >= math.pi / 2, t - math.pi, t)
    return out


def keep_on_valid_pixels(boxes: np.ndarray, info: SceneInfo, spec: ReadSpec,
                         coverage: CoverageMap | None) -> Kept:
    """Drop the boxes whose centre is outside the scene or on an invalid pixel; clip the rest."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    cx, cy = boxes[:, 0], boxes[:, 1]
    keep = (cx >= 0) & (cx < info.width) & (cy >= 0) & (cy < info.height)
    idx = np.flatnonzero(keep)
    if idx.size:  # valid_at reads the pixels of a masked scene planned without a coverage map
        cols = np.floor(cx[idx]).astype(np.int64)
        rows = np.floor(cy[idx]).astype(np.int64)
        keep[idx] = valid_at(info, spec, coverage, cols, rows)
    clipped, over = clip_to_scene(boxes[keep], info.width, info.height)
    return Kept(keep, clipped, int(over.sum()))
