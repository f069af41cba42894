"""Which detections are parts of one bridge: the pair relations of the holistic merge's fusion pass.

See :mod:`serving.merge.methods` for the rules. Everything here works on ``(N, 5)`` le90 boxes in scene
pixels and on index pairs ``(longer, shorter)``.
"""

from __future__ import annotations

import math

import numpy as np

from serving.merge.config import MergeConfig
from serving.merge.pairs import points_in_boxes, size_class


def cut_margin(boxes: np.ndarray, scales: np.ndarray, config: MergeConfig) -> np.ndarray:
    """How close (scene pixels) a box's end may be to its window's border and still count as cut
    there: ``cut_margin`` level pixels, plus the uncertainty of the end (``end_tol`` of the length)."""
    return config.cut_margin * scales + config.end_tol * boxes[:, 2]


def neighbour_pairs(
    boxes: np.ndarray, scales: np.ndarray, labels: np.ndarray, touching: np.ndarray, config: MergeConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(longer, shorter)`` that may continue one another or form a stub (see relations).

    Found by two look-ups of points in grown boxes, each a superset of its relation:

    * continuations: an end of the shorter box lies in the longer one grown by the gap and lateral
      tolerances, with a width (size class) and direction (10-degree bin) like the longer one's;
    * stubs: the centre of the shorter box, one that may touch its window's border (``touching``),
      lies near an end of the longer one, with a length of about the longer one's width.

    The width tolerance is taken in the longer box's level pixels: a partner from a much coarser
    level may be farther off, but it is then also far longer than those pixels and rarely the shorter.
    """
    cx, cy, w, h, t = (boxes[:, k] for k in range(5))
    n = len(boxes)
    cos, sin = np.cos(t), np.sin(t)
    ux, uy = cos * w / 2, sin * w / 2

    # Continuations: |h_S - h_L| <= width_tol * max(h) + slack, so h_S <= widest; angles within tol.
    wt, slack = config.width_tol, scales
    widest = (h + slack) / (1 - wt)
    spread = math.sin(math.radians(config.angle_tol_deg)) * widest / 2 + slack
    margin = (config.gap_tol * h + spread, np.maximum(config.lateral_tol * widest + spread - h / 2, 0.0))
    # Point classes (direction bin, width class); each box asks for its own and the adjacent bins.
    n_bins, bin_of = angle_bins(t, config.angle_tol_deg)
    n_w = int(size_class(widest).max()) + 1
    lo_w, hi_w = size_class((1 - wt) * h - slack), size_class(widest)
    bins = (bin_of[:, None] + (np.array([-1, 0, 1]) if n_bins >= 3 else np.array([0]))) % n_bins
    ranges = np.stack([bins * n_w + lo_w[:, None], bins * n_w + hi_w[:, None]], axis=2)
    ends = np.concatenate([np.stack([cx - ux, cy - uy], 1), np.stack([cx + ux, cy + uy], 1)])
    owner = np.concatenate([np.arange(n), np.arange(n)])
    cont_l, cont_p = points_in_boxes(boxes, margin, ranges, ends, (bin_of * n_w + size_class(h))[owner])

    # Stubs: stub_min * h_L <= w_S <= stub_ratio * h_L, centre within stub_ratio * h_L of an end.
    reach = config.stub_ratio * h
    zero = np.zeros(n)
    end_boxes = np.concatenate(
        [np.stack([cx - ux, cy - uy, zero, zero, t], 1), np.stack([cx + ux, cy + uy, zero, zero, t], 1)]
    )
    stub_ranges = np.stack([size_class(config.stub_min * h), size_class(reach)], axis=1)[:, None, :]
    stub_margin = (np.maximum(reach, (config.gap_tol + config.stub_ratio / 2) * h), config.lateral_tol * h)
    candidates = np.flatnonzero(touching)
    stub_b, stub_p = points_in_boxes(
        end_boxes,
        (np.concatenate([stub_margin[0]] * 2), np.concatenate([stub_margin[1]] * 2)),
        np.concatenate([stub_ranges, stub_ranges]),
        boxes[candidates, :2], size_class(w[candidates]),
    )
    stub_p = candidates[stub_p]

    longer = np.concatenate([cont_l, stub_b % n])
    shorter = np.concatenate([owner[cont_p], stub_p])
    keep = (shorter != longer) & ((w[shorter] < w[longer]) | ((w[shorter] == w[longer]) & (shorter > longer)))
    if not config.class_agnostic:
        keep &= labels[shorter] == labels[longer]
    # A pair can be found through both ends of the shorter box, and by both look-ups.
    key = np.sort(longer[keep] * n + shorter[keep])
    key = key[np.r_[True, key[1:] != key[:-1]]] if len(key) else key
    return key // n, key % n


def angle_bins(theta: np.ndarray, tol_deg: float) -> tuple[int, np.ndarray]:
    """Bins of directions (mod pi) at least ``tol_deg`` wide, and the bin of each angle; a single bin
    when fewer than three fit (then the neighbour bins would wrap onto each other)."""
    n_bins = int(180 // max(tol_deg, 1e-6))
    n_bins = n_bins if n_bins >= 3 else 1
    frac = np.remainder(theta + math.pi / 2, math.pi) / math.pi
    return n_bins, np.minimum((frac * n_bins).astype(np.int64), n_bins - 1)


def relations(
    boxes: np.ndarray,
    scales: np.ndarray,
    cut: tuple[np.ndarray, np.ndarray],
    touching: np.ndarray,
    li: np.ndarray,
    si: np.ndarray,
    config: MergeConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """For pairs of a longer box ``li`` and a shorter box ``si``: ``continues`` (the two continue one
    another, module doc, pass 1) and ``stub`` (the shorter one is a stub on the longer one's deck).
    ``cut`` says for every box whether its ``-u`` and ``+u`` ends may be cuts by its window's border
    (not known to be real ends), ``touching`` whether the box may touch that border."""
    L, S = boxes[li], boxes[si]
    delta = np.remainder(S[:, 4] - L[:, 4] + math.pi / 2, math.pi) - math.pi / 2  # in [-pi/2, pi/2)
    cd, sd = np.abs(np.cos(delta)), np.abs(np.sin(delta))
    cos_l, sin_l = np.cos(L[:, 4]), np.sin(L[:, 4])
    dx, dy = S[:, 0] - L[:, 0], S[:, 1] - L[:, 1]
    along = dx * cos_l + dy * sin_l
    across = -dx * sin_l + dy * cos_l
    half_s = (S[:, 2] * cd + S[:, 3] * sd) / 2  # half extent of S along L's axis
    lo = np.maximum(along - half_s, -L[:, 2] / 2)
    hi = np.minimum(along + half_s, L[:, 2] / 2)
    width = np.maximum(S[:, 3], L[:, 3])

    # A piece about as long as the other's deck is wide, cut off by a window border near a bridge's
    # end, has no meaningful direction: it is judged by where it lies, not by its angle, and it may
    # join a group but not link two (see attach_stub_groups). A box that touches no window border
    # is not such a piece (it may be a small bridge next to the end of a wide one).
    short = S[:, 2] <= config.stub_ratio * L[:, 3]
    stub = (
        short
        & touching[si]  # a piece cut off by its window's border
        & (L[:, 2] >= 2 * S[:, 2])  # of a box with a direction: clearly longer than the piece
        & (S[:, 2] >= config.stub_min * L[:, 3])
        & (np.abs(along) >= L[:, 2] / 2 - config.stub_ratio * L[:, 3])  # near an end of L
        & (lo - hi <= config.gap_tol * L[:, 3])
        & (np.abs(across) <= config.lateral_tol * L[:, 3])
    )
    aligned = np.abs(delta) <= math.radians(config.angle_tol_deg)
    # Offset of S's centre line from L's at both ends of their common interval (of the gap when they
    # do not overlap): the largest offset over the interval, since it changes linearly along it.
    slope = np.tan(np.where(aligned, delta, 0.0))
    lateral = np.maximum(np.abs(across + (lo - along) * slope), np.abs(across + (hi - along) * slope))
    # Parts of one bridge have about one width; each box's width is uncertain by half a pixel of its
    # level (rounding).
    similar = np.abs(S[:, 3] - L[:, 3]) <= config.width_tol * width + (scales[si] + scales[li]) / 2
    gap_ok = lo - hi <= config.gap_tol * np.minimum(S[:, 3], L[:, 3])
    # Two boxes that meet end to end, each with a real (not cut) end at the meeting, are two bridges:
    # a bridge does not go on past its own end. "Meet" allows an overlap of a width, or of the
    # uncertainty of the ends (end_tol of the mean length). Fragments of one bridge from
    # neighbouring windows meet with cut ends, and overlap by the window overlap: 200 level pixels,
    # at least 14 % of a fragment (a window's diagonal is 1448 px).
    beyond_hi = along + half_s > L[:, 2] / 2
    beyond_lo = along - half_s < -L[:, 2] / 2
    meet = hi - lo <= np.maximum(width, config.end_tol * (S[:, 2] + L[:, 2]) / 2)
    end_to_end = (beyond_hi ^ beyond_lo) & meet
    same_way = np.cos(S[:, 4] - L[:, 4]) > 0  # S's +u end points along L's +u
    l_cut = np.where(beyond_hi, cut[1][li], cut[0][li])
    # S's end facing L is its low end (in L's frame) when S sticks out past L's high end.
    s_cut = np.where(beyond_hi == same_way, cut[0][si], cut[1][si])
    ends_meet = end_to_end & ~l_cut & ~s_cut
    continues = ~short & aligned & similar & gap_ok & ~ends_meet & (lateral <= config.lateral_tol * width)
    return continues, stub


def attach_stub_groups(
    group: np.ndarray, boxes: np.ndarray, host: np.ndarray, stub: np.ndarray
) -> np.ndarray:
    """Move each group made only of stubs of another group into that group.

    ``group`` labels nodes by a member index; ``(host, stub)`` are stub pairs. A group X joins a group
    Y when every member of X is a stub of some box of Y; with several such Y, the one with the longest
    such box. Groups that join others cannot receive any (one pass), so a stub group joins one group
    and never links two: a cut-off piece where two bridges cross cannot fuse them.
    """
    n = len(group)
    x, y = group[stub], group[host]
    apart = x != y
    x, y, stub, host = x[apart], y[apart], stub[apart], host[apart]
    # Per (X, Y): distinct stubs of X, and the longest host box in Y.
    order = np.lexsort((stub, y, x))
    x, y, stub, length = x[order], y[order], stub[order], boxes[host[order], 2]
    new_pair = np.r_[True, (x[1:] != x[:-1]) | (y[1:] != y[:-1])] if len(x) else np.zeros(0, dtype=bool)
    new_stub = new_pair | np.r_[True, stub[1:] != stub[:-1]][: len(x)]
    pair_id = np.cumsum(new_pair) - 1
    n_pairs = int(new_pair.sum())
    distinct = np.bincount(pair_id, weights=new_stub, minlength=n_pairs)
    longest = np.zeros(n_pairs)
    np.maximum.at(longest, pair_id, length)
    px, py = x[new_pair], y[new_pair]
    # X qualifies for Y when all its members are stubs of Y; joiners cannot be joined.
    full = distinct == np.bincount(group, minlength=n)[px]
    joining = np.zeros(n, dtype=bool)
    joining[px[full]] = True
    ok = full & ~joining[py]
    px, py, longest = px[ok], py[ok], longest[ok]
    if len(px) == 0:
        return group
    order = np.lexsort((-longest, px))
    px, py = px[order], py[order]
    first = np.r_[True, px[1:] != px[:-1]]
    target = np.arange(n)
    target[px[first]] = py[first]
    return target[group]
