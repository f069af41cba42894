"""One oriented box per group of detections of the same bridge (fragments, duplicates, levels).

The members of a group are boxes that agree in direction and continue one another along it (see
:mod:`serving.merge.methods`). Their evidence is not equally precise: a box from level ``k`` was found on a
``2**k`` times coarser image, so its edges are uncertain by a few ``2**k`` scene pixels, while a
coarse window holds a whole bridge that a fine window only sees in parts. The fused box therefore
takes

* its **direction** from all members, a circular mean of ``2 theta`` weighted by
  ``score * ((w - h) / scale)**2``: a box's angle is as precise as it is long in the pixels it was
  found on, and a near-square box says nothing about direction;
* its **ends**, each on its own. Every member shows that the bridge reaches at least its end less
  that end's uncertainty (``end_k`` times its end sigma: ``edge_error`` pixels of its level plus
  ``end_frac`` of its length). The candidates are the members whose end is real (not a cut by a
  window border: a box that stops at its window's edge shows where the window ended, not the
  bridge) and agrees with that bound taken over its own and finer levels; among them the finest
  level wins and its ends are averaged (score-weighted), which removes the jitter of duplicates
  from overlapping windows. A coarse box thus sets an end only where every finer box is cut
  (completeness from the coarse level), and a coarse box reaching past a fine real end does not
  move it (precision from the fine one). Without window bounds no end is known to be real or cut:
  the bound is then taken over all levels (a coarse box reaching further completes the bridge);
* its **cross-section** (lateral position and width) from the finest level in the group, as
  weighted medians (weights ``score * length``), since width is where coarse levels are worst
  (a 20 px deck is 1.25 px wide at 1/16); only elongated members (at least ``stub_ratio`` widths
  long) count when the group has any, since a piece as long as the deck is wide says little about
  where the deck's centre line is;
* the **score** of its best member (fusing must not make a bridge less certain because parts of it
  were seen cut) and the **level** of its coarsest member (the level that saw the most of it).

Direction, ends and cross-section come only from the members scoring at least ``score_ratio`` of the
group's best: a doubtful detection that joined the group (a false positive beside the bridge, within
a coarse box's tolerance) must not move the confident ones.

With the box come what the merge's second grouping pass needs to compare groups (:class:`FusedGroups`):
the sigma of the members that set its cross-section, and each fused end's sigma and cut state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from hbdnet.boxes.convention import obb_to_poly, regularize_le90


def end_cuts(
    boxes: np.ndarray,
    ux: np.ndarray,
    uy: np.ndarray,
    window_bounds: np.ndarray | None,
    margin: np.ndarray,
    min_heading: float = math.sin(math.radians(5.0)),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whether each box's low and high end along the direction ``(ux, uy)`` is a window border cut,
    and whether the box touches its window's border at all.

    An end is the pair of corners lowest (highest) along the direction; it is cut when one of them
    lies within ``margin`` scene pixels of a border of its window, or beyond it, that the direction
    heads out through (its component across that border at least ``min_heading``). A box lying along
    a border (a sliver of a deck that runs beside the window's edge) is not cut by that border: its
    ends are where the bridge ends. Working in the group's direction also handles a stub whose
    rectangle lies across the deck. Without window bounds no end is found to be cut (callers that
    must not take an unknown end for a real one check for None themselves).
    """
    n = len(boxes)
    if window_bounds is None:
        no = np.zeros(n, dtype=bool)
        return no, no, no
    corners = obb_to_poly(torch.from_numpy(boxes)).numpy().reshape(n, 4, 2)
    proj = corners[..., 0] * ux[:, None] + corners[..., 1] * uy[:, None]
    order = np.argsort(proj, axis=1)
    x0, y0, x1, y1 = (window_bounds[:, k, None] for k in range(4))
    m = margin[:, None]
    px = np.take_along_axis(corners[..., 0], order, axis=1)
    py = np.take_along_axis(corners[..., 1], order, axis=1)
    near = [px <= x0 + m, px >= x1 - m, py <= y0 + m, py >= y1 - m]  # (N, 4) each, corners low to high
    touching = (near[0] | near[1] | near[2] | near[3]).any(axis=1)
    hx, hy = ux[:, None] >= min_heading, uy[:, None] >= min_heading  # +u heads out through x1 / y1
    lx, ly = -ux[:, None] >= min_heading, -uy[:, None] >= min_heading

    def cut(heads_x1, heads_x0, heads_y1, heads_y0, k):
        return ((near[1] & heads_x1) | (near[0] & heads_x0) | (near[3] & heads_y1) | (near[2] & heads_y0))[:, k].any(1)

    hi = cut(hx, lx, hy, ly, slice(2, 4))
    lo = cut(lx, hx, ly, hy, slice(0, 2))
    return lo, hi, touching


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


@dataclass(frozen=True)
class FusedGroups:
    """One box per group: ``boxes`` ``(G, 5)`` le90, ``scores`` (best member), ``levels`` (coarsest
    member), ``finest`` (finest member level), ``sigma`` (the finest members' edge sigma: the group's
    lateral precision), ``end_sigma`` ``(G, 2)`` and ``cut`` ``(G, 2)`` of the fused box's ``-u`` and ``+u``
    ends (a cut end: no member showed a real end there)."""

    boxes: np.ndarray
    scores: np.ndarray
    levels: np.ndarray
    finest: np.ndarray
    sigma: np.ndarray
    end_sigma: np.ndarray
    cut: np.ndarray


def fuse_groups(
    boxes: np.ndarray,
    scores: np.ndarray,
    levels: np.ndarray,
    sigma: np.ndarray,
    end_sigma: np.ndarray,
    group: np.ndarray,
    n_groups: int,
    window_bounds: np.ndarray | None,
    cut_margin: np.ndarray,
    end_k: float,
    stub_ratio: float = 1.5,
    score_ratio: float = 0.5,
) -> FusedGroups:
    """Fused boxes of members labelled ``group`` (module doc).

    ``boxes`` ``(N, 5)`` le90 scene pixels of the members only; ``group`` ``(N,)`` in ``[0, G)``; ``sigma``
    and ``end_sigma`` ``(N,)`` each member's edge and end uncertainty in scene pixels; ``window_bounds``
    ``(N, 4)`` the footprint of each member's window in scene pixels, or None (then no end is taken
    for a cut); ``cut_margin`` ``(N,)`` scene pixels (see :func:`end_cuts`); ``end_k`` the tolerance factor on
    end sigmas; members shorter than ``stub_ratio`` widths give no cross-section unless all are;
    members scoring below ``score_ratio`` of their group's best give no geometry at all.
    """
    g, n_g = group, n_groups
    cx, cy, w, h, t = (boxes[:, k] for k in range(5))
    scale = np.exp2(levels.astype(np.float64))
    s = np.maximum(scores, 1e-6)
    # Only members at least score_ratio as confident as the group's best shape it: a doubtful
    # detection that joined (a false positive beside the bridge) must not move a confident one.
    confident = s >= score_ratio * _group_max(s, g, n_g)[g]

    # Direction: doubled-angle mean, so theta and theta + pi agree.
    omega = confident * s * (((w - h) / scale) ** 2 + 1e-6)
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
    # Unknown windows: every end is taken for evidence of the bridge's end (the finest level wins).
    cut_lo, cut_hi, _ = end_cuts(boxes, ux[g], uy[g], window_bounds, cut_margin)
    big = np.iinfo(np.int64).max

    def end(values: np.ndarray, cut: np.ndarray, sign: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Every member shows the bridge reaching at least its end less its uncertainty. A real end
        # is a candidate when it agrees with that bound taken over its own and finer levels (a
        # coarse box reaching further than a fine real end refines nothing), and the finest level
        # among the candidates decides. Without window bounds no end is known to be real: the bound
        # is taken over all levels (a coarse box that reaches further completes the bridge).
        v = sign * values
        lower = np.where(confident, v - end_k * end_sigma, -np.inf)
        if window_bounds is None:
            bound = _group_max(lower, g, n_g)[g]
        else:
            bound = np.full(len(v), -np.inf)
            upto = np.full(n_g, -np.inf)
            for lv in np.unique(levels):
                at = levels == lv
                upto = np.maximum(upto, _group_max(np.where(at, lower, -np.inf), g, n_g))
                bound[at] = upto[g[at]]
        near = confident & ~cut & (v + end_k * end_sigma >= bound)
        finest = _group_min(np.where(near, levels, big).astype(np.float64), g, n_g)
        sel = near & (levels == finest[g])
        wsum = _group_sum(s * sel, g, n_g)
        mean = _group_sum(s * sel * v, g, n_g) / np.maximum(wsum, 1e-300)
        found = wsum > 0
        sig = _group_sum(sel * end_sigma, g, n_g) / np.maximum(_group_sum(sel * 1.0, g, n_g), 1)
        outer = _group_max(np.where(confident, v, -np.inf), g, n_g)
        return sign * np.where(found, mean, outer), ~found, np.where(found, sig, _group_min(end_sigma, g, n_g))

    end_lo, open_lo, sig_lo = end(lo, cut_lo, -1.0)
    end_hi, open_hi, sig_hi = end(hi, cut_hi, 1.0)

    # Cross-section from the finest level of each group, among its elongated members if it has any
    # (a piece about as long as it is wide, a stub, says little about where the deck's centre line is).
    finest_level = _group_min(levels.astype(np.float64), g, n_g)
    elongated = w >= stub_ratio * h
    has_long = _group_max((elongated & confident) * 1.0, g, n_g) > 0
    eligible = confident & (elongated | ~has_long[g])
    finest_eligible = _group_min(np.where(eligible, levels, big).astype(np.float64), g, n_g)
    fine = eligible & (levels == finest_eligible[g])
    weight = s * 2 * e
    sub = np.flatnonzero(fine)
    lateral = _weighted_median(b[sub], weight[sub], g[sub], n_g)
    width = _weighted_median(2 * f[sub], weight[sub], g[sub], n_g)

    mid = (end_lo + end_hi) / 2
    length = end_hi - end_lo
    cut = np.stack([open_lo, open_hi], axis=1)
    end_sig = np.stack([sig_lo, sig_hi], axis=1)
    # le90 by hand, to keep track of the ends: turned by pi, the ends swap; a group wider than long
    # has no ends that mean anything (both count as cuts).
    turned = axis >= np.pi / 2
    axis = np.where(turned, axis - np.pi, axis)
    cut = np.where(turned[:, None], cut[:, ::-1], cut)
    end_sig = np.where(turned[:, None], end_sig[:, ::-1], end_sig)
    fused = np.stack(
        [ox + mid * ux - lateral * uy, oy + mid * uy + lateral * ux, length, width, axis], axis=1
    )
    swap = length < width
    if swap.any():
        fused[swap] = regularize_le90(torch.from_numpy(fused[swap])).numpy()
        cut[swap] = True
    return FusedGroups(
        fused, _group_max(scores, g, n_g), _group_max(levels.astype(np.float64), g, n_g).astype(np.int64),
        finest_level.astype(np.int64), _group_min(np.where(fine, sigma, np.inf), g, n_g), end_sig, cut,
    )
