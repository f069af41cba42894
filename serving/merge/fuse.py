"""One oriented box per group of detections of the same bridge (fragments, duplicates, levels).

The members of a group are boxes that agree in direction and continue one another along it (see
:mod:`serving.merge.methods`). Their evidence is not equally precise: a box from level ``k`` was found on a
``2**k`` times coarser image, so its edges are uncertain by about ``2**k`` scene pixels, while a
coarse window holds a whole bridge that a fine window only sees in parts. The fused box therefore
takes

* its **direction** from all members, a circular mean of ``2 theta`` weighted by
  ``score * ((w - h) / scale)**2``: a box's angle is as precise as it is long in the pixels it was
  found on, and a near-square box says nothing about direction;
* its **ends**, each on its own, from the finest level that reaches that end: the members whose end
  lies within ``end_tol * length`` of the group's outermost point and is not a cut by a window
  border (a box that stops at its window's edge shows where the window ended, not the bridge);
  among them the finest level wins and its ends are averaged (score-weighted), which removes the
  jitter of duplicates from overlapping windows. A coarse box thus sets an end only where no finer
  box reaches it (completeness from the coarse level, precision from the fine one);
* its **cross-section** (lateral position and width) from the finest level in the group, as
  weighted medians (weights ``score * length``), since width is where coarse levels are worst
  (a 20 px deck is 1.25 px wide at 1/16);
* the **score** of its best member (fusing must not make a bridge less certain because parts of it
  were seen cut) and the **level** of its coarsest member (the level that saw the most of it).
"""

from __future__ import annotations

import numpy as np
import torch

from hbdnet.boxes.convention import obb_to_poly, regularize_le90


def end_cuts(
    boxes: np.ndarray, ux: np.ndarray, uy: np.ndarray, window_bounds: np.ndarray | None, margin: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Whether each box's low and high end along the direction ``(ux, uy)`` is a window border cut.

    An end is the pair of corners lowest (highest) along the direction; it is cut when one of them
    lies within ``margin`` scene pixels of its window's border, or beyond it. Working in the group's
    direction also handles a stub whose rectangle lies across the deck.
    """
    n = len(boxes)
    if window_bounds is None:
        return np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    corners = obb_to_poly(torch.from_numpy(boxes)).numpy().reshape(n, 4, 2)
    proj = corners[..., 0] * ux[:, None] + corners[..., 1] * uy[:, None]
    order = np.argsort(proj, axis=1)
    x0, y0, x1, y1 = (window_bounds[:, k, None] for k in range(4))
    m = margin[:, None]
    px, py = corners[..., 0], corners[..., 1]
    near = (px <= x0 + m) | (px >= x1 - m) | (py <= y0 + m) | (py >= y1 - m)  # (N, 4)
    near = np.take_along_axis(near, order, axis=1)
    return near[:, :2].any(1), near[:, 2:].any(1)


def _group_min(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    out = np.full(n_groups, np.inf)
    np.minimum.at(out, group, values)
    return out


def _group_max(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    out = np.full(n_groups, -np.inf)
    np.maximum.at(out, group, values)
    return out


def _group_sum(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    return np.bincount(group, weights=values, minlength=n_groups)


def _weighted_median(values: np.ndarray, weights: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Per group, the smallest value whose cumulative weight reaches half the group's weight."""
    order = np.lexsort((values, group))
    v, wt, g = values[order], weights[order], group[order]
    cum = np.cumsum(wt)
    before = np.r_[0.0, cum][np.searchsorted(g, np.arange(n_groups))]  # weight of earlier groups
    half = before + _group_sum(wt, g, n_groups) / 2
    # First position of each group whose cumulative weight reaches its half.
    reached = cum >= half[g] - 1e-12 * np.abs(half[g])
    pos = np.where(reached, np.arange(len(v)), len(v))
    first = np.full(n_groups, len(v))
    np.minimum.at(first, g, pos)
    return v[np.minimum(first, len(v) - 1)]


def fuse_groups(
    boxes: np.ndarray,
    scores: np.ndarray,
    levels: np.ndarray,
    group: np.ndarray,
    n_groups: int,
    window_bounds: np.ndarray | None,
    cut_margin: np.ndarray,
    end_tol: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fused ``(G, 5)`` boxes, ``(G,)`` scores and ``(G,)`` levels for members labelled ``group``.

    ``boxes`` ``(N, 5)`` le90 scene pixels of the members only; ``group`` ``(N,)`` in ``[0, G)``;
    ``window_bounds`` ``(N, 4)`` the footprint of each member's window in scene pixels, or None
    (then no end is taken for a cut); ``cut_margin`` ``(N,)`` scene pixels (see :func:`end_cuts`).
    """
    g, n_g = group, n_groups
    cx, cy, w, h, t = (boxes[:, k] for k in range(5))
    scale = np.exp2(levels.astype(np.float64))
    s = np.maximum(scores, 1e-6)

    # Direction: doubled-angle mean, so theta and theta + pi agree.
    omega = s * (((w - h) / scale) ** 2 + 1e-6)
    axis = 0.5 * np.arctan2(
        _group_sum(omega * np.sin(2 * t), g, n_g), _group_sum(omega * np.cos(2 * t), g, n_g)
    )
    ux, uy = np.cos(axis), np.sin(axis)
    count = np.bincount(g, minlength=n_g)
    ox, oy = _group_sum(cx, g, n_g) / count, _group_sum(cy, g, n_g) / count

    # Members in the group's frame: along-axis centre a, cross-axis centre b, half extents e, f.
    dx, dy = cx - ox[g], cy - oy[g]
    a = dx * ux[g] + dy * uy[g]
    b = -dx * uy[g] + dy * ux[g]
    delta = t - axis[g]
    cd, sd = np.abs(np.cos(delta)), np.abs(np.sin(delta))
    e = (w * cd + h * sd) / 2
    f = (w * sd + h * cd) / 2
    lo, hi = a - e, a + e
    cut_lo, cut_hi = end_cuts(boxes, ux[g], uy[g], window_bounds, cut_margin)

    outer_lo, outer_hi = _group_min(lo, g, n_g), _group_max(hi, g, n_g)
    tol = end_tol * (outer_hi - outer_lo)

    def end(values: np.ndarray, cut: np.ndarray, outer: np.ndarray, sign: float) -> np.ndarray:
        near = ~cut & (sign * (outer[g] - values) <= tol[g])
        finest = _group_min(np.where(near, levels, np.iinfo(np.int64).max).astype(np.float64), g, n_g)
        sel = near & (levels == finest[g])
        wsum = _group_sum(s * sel, g, n_g)
        mean = _group_sum(s * sel * values, g, n_g) / np.maximum(wsum, 1e-300)
        return np.where(wsum > 0, mean, outer)

    end_lo = end(lo, cut_lo, outer_lo, -1.0)
    end_hi = end(hi, cut_hi, outer_hi, 1.0)

    # Cross-section from the finest level of each group.
    finest_level = _group_min(levels.astype(np.float64), g, n_g)
    fine = levels == finest_level[g]
    weight = s * 2 * e
    sub = np.flatnonzero(fine)
    lateral = _weighted_median(b[sub], weight[sub], g[sub], n_g)
    width = _weighted_median(2 * f[sub], weight[sub], g[sub], n_g)

    mid = (end_lo + end_hi) / 2
    fused = np.stack(
        [ox + mid * ux - lateral * uy, oy + mid * uy + lateral * ux, end_hi - end_lo, width, axis], axis=1
    )
    fused = regularize_le90(torch.from_numpy(fused)).numpy()
    return fused, _group_max(scores, g, n_g), _group_max(levels.astype(np.float64), g, n_g).astype(np.int64)
