"""Which detections are parts of one bridge: the pair relations of the holistic merge's grouping.

See :mod:`serving.merge.methods` for the rules. Everything here works on :class:`Evidence` (``(N, 5)``
le90 boxes in scene pixels with their level-aware uncertainties and the cut or real state of their
ends, for window detections or for fused groups alike) and on index pairs ``(longer, shorter)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from serving.merge.config import MergeConfig
from serving.merge.fuse import end_cuts
from serving.merge.pairs import N_CLASSES, points_in_boxes, size_class


@dataclass(frozen=True)
class Evidence:
    """What the fusion pass knows of each box (a window detection, or a group fused from some).

    ``boxes`` ``(N, 5)`` le90 scene pixels; ``sigma`` ``(N,)`` the uncertainty of its edges across the
    deck in scene pixels (``edge_error`` pixels of its level; of its finest level for a group);
    ``end_sigma`` ``(N, 2)`` that of its ``-u`` and ``+u`` ends; ``cut`` ``(N, 2)`` whether each of those
    ends is a cut by a window border (or not known to be the bridge's end); ``touching`` ``(N,)``
    whether the box may touch its window's border at all; ``labels`` ``(N,)``.
    """

    boxes: np.ndarray
    sigma: np.ndarray
    end_sigma: np.ndarray
    cut: np.ndarray
    touching: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)


def detection_evidence(
    boxes: np.ndarray, levels: np.ndarray, labels: np.ndarray, bounds: np.ndarray | None, config: MergeConfig
) -> Evidence:
    """Evidence of window detections: sigmas from their level, cuts from their window's border.

    An end is a cut when one of its two corners lies within ``cut_margin`` pixels of its level from
    the border of the window it came from, or beyond it; without window bounds no end is known to be
    real, so all are cuts.
    """
    scales = np.exp2(levels.astype(np.float64))
    sigma = config.edge_error * scales
    end_sigma = np.repeat((sigma + config.end_frac * boxes[:, 2])[:, None], 2, axis=1)
    if bounds is None:
        cut = np.ones((len(boxes), 2), dtype=bool)
        return Evidence(boxes, sigma, end_sigma, cut, cut[:, 0], labels)
    lo, hi, touching = end_cuts(boxes, np.cos(boxes[:, 4]), np.sin(boxes[:, 4]), bounds, config.cut_margin * scales)
    return Evidence(boxes, sigma, end_sigma, np.stack([lo, hi], axis=1), touching, labels)


def neighbour_pairs(ev: Evidence, config: MergeConfig) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(longer, shorter)`` that may continue one another or form a stub (see relations).

    Found by look-ups of points in grown boxes, each a superset of its relation:

    * continuations: an end of the shorter box lies in the longer one grown by the end and lateral
      tolerances, with a width (size class) and direction (angle bin) like the longer one's. The
      tolerances depend on the partner's sigma, so the partners are looked up in groups of levels,
      each with the margins of its largest sigma;
    * stubs: the centre of the shorter box, one that may touch its window's border, lies near an
      end of the longer one, with a length of about the longer one's width.
    """
    boxes = ev.boxes
    cx, cy, w, h, t = (boxes[:, k] for k in range(5))
    n = len(boxes)
    cos, sin = np.cos(t), np.sin(t)
    ux, uy = cos * w / 2, sin * w / 2
    wt = config.width_tol
    n_bins, bin_of = angle_bins(t, config.angle_tol_deg)
    bins = (bin_of[:, None] + (np.array([-1, 0, 1]) if n_bins >= 3 else np.array([0]))) % n_bins
    ends = np.concatenate([np.stack([cx - ux, cy - uy], 1), np.stack([cx + ux, cy + uy], 1)])
    owner = np.concatenate([np.arange(n), np.arange(n)])
    n_w = N_CLASSES
    point_class = (bin_of * n_w + size_class(h))[owner]
    longer, shorter = [], []
    # One look-up per group of partner sigmas (levels), each at the largest sigma of its group (a
    # superset of the group's pairs): the two finest levels, then the coarse ones, with few boxes.
    # Two look-ups cost less than one per level (each reads every box) or one for all (margins of
    # the coarsest level around every box).
    sigmas = np.unique(ev.sigma)
    buckets = [sigmas[:2], sigmas[2:]]
    for bucket in buckets:
        if not len(bucket):
            continue
        sig = bucket.max()
        mine = np.flatnonzero(np.isin(ev.sigma[owner], bucket))
        # Only boxes at least as long as the shortest partner of this sigma can be the longer one.
        box = np.flatnonzero(w >= w[owner[mine]].min())
        pair_sigma = ev.sigma[box] + sig
        hb = h[box]
        slack = 2 * pair_sigma
        widest = (hb + slack) / (1 - wt)
        spread = math.sin(math.radians(config.angle_tol_deg)) * widest / 2  # the partner's turn
        # One end of the shorter box lies inside the longer one, or within the largest gap allowed.
        margin = (config.end_k * pair_sigma + spread, np.maximum(config.lateral_k * pair_sigma + spread - hb / 2, 0.0))
        lo_w, hi_w = size_class((1 - wt) * hb - slack), size_class(widest)
        ranges = np.stack([bins[box] * n_w + lo_w[:, None], bins[box] * n_w + hi_w[:, None]], axis=2)
        b, p = points_in_boxes(boxes[box], margin, ranges, ends[mine], point_class[mine])
        lb, sp = box[b], owner[mine[p]]
        # The look-up holds for the longer box of a pair (found from it); drop the other way round.
        ok = (w[sp] < w[lb]) | ((w[sp] == w[lb]) & (sp > lb))
        longer.append(lb[ok])
        shorter.append(sp[ok])

    # Stubs: stub_min * h_L <= w_S <= stub_ratio * h_L, centre within stub_ratio * h_L of an end.
    reach = config.stub_ratio * h
    zero = np.zeros(n)
    end_boxes = np.concatenate(
        [np.stack([cx - ux, cy - uy, zero, zero, t], 1), np.stack([cx + ux, cy + uy, zero, zero, t], 1)]
    )
    stub_ranges = np.stack([size_class(config.stub_min * h), size_class(reach)], axis=1)[:, None, :]
    stub_margin = (np.maximum(reach, (config.stub_min + config.stub_ratio / 2) * h), config.stub_lateral * h)
    candidates = np.flatnonzero(ev.touching)
    stub_b, stub_p = points_in_boxes(
        end_boxes,
        (np.concatenate([stub_margin[0]] * 2), np.concatenate([stub_margin[1]] * 2)),
        np.concatenate([stub_ranges, stub_ranges]),
        boxes[candidates, :2], size_class(w[candidates]),
    )
    longer.append(stub_b % n)
    shorter.append(candidates[stub_p])
    return ordered_pairs(np.concatenate(longer), np.concatenate(shorter), w, ev.labels, config)


def ordered_pairs(
    a: np.ndarray, b: np.ndarray, length: np.ndarray, labels: np.ndarray, config: MergeConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct pairs of different items as ``(longer, shorter)`` (ties: the lower index first), of
    one label unless class-agnostic."""
    n = len(length)
    longer = np.where((length[a] > length[b]) | ((length[a] == length[b]) & (a < b)), a, b)
    shorter = a + b - longer
    keep = longer != shorter
    if not config.class_agnostic:
        keep &= labels[shorter] == labels[longer]
    key = np.sort(longer[keep] * n + shorter[keep])  # sorting beats np.unique's hashing here
    key = key[np.r_[True, key[1:] != key[:-1]]] if len(key) else key
    return key // n, key % n


def angle_bins(theta: np.ndarray, tol_deg: float) -> tuple[int, np.ndarray]:
    """Bins of directions (mod pi) at least ``tol_deg`` wide, and the bin of each angle; a single bin
    when fewer than three fit (then the neighbour bins would wrap onto each other)."""
    n_bins = int(180 // max(tol_deg, 1e-6))
    n_bins = n_bins if n_bins >= 3 else 1
    frac = np.remainder(theta + math.pi / 2, math.pi) / math.pi
    return n_bins, np.minimum((frac * n_bins).astype(np.int64), n_bins - 1)


@dataclass(frozen=True)
class PairRelations:
    """Relations of pairs ``(longer, shorter)``: ``continues`` (parts of one bridge, module doc of
    :mod:`serving.merge.methods`), ``precise`` (the link is fine enough to tell twin decks apart),
    ``stub`` (the shorter is a stub on the longer one's deck), ``residual`` (lateral offset over its
    tolerance: how well the two agree), ``overlap`` (length of their common interval along the
    longer one's axis, 0 for a gap)."""

    continues: np.ndarray
    precise: np.ndarray
    stub: np.ndarray
    residual: np.ndarray
    overlap: np.ndarray


def relations(ev: Evidence, li: np.ndarray, si: np.ndarray, config: MergeConfig) -> PairRelations:
    """The relations of pairs of a longer box ``li`` and a shorter box ``si`` (see :class:`PairRelations`).

    Pairs that can hold no relation (directions too far apart, and no stub) are answered without
    computing the rest: most neighbour pairs of a dense scene are such."""
    t_l, t_s = ev.boxes[li, 4], ev.boxes[si, 4]
    delta = np.abs(np.remainder(t_s - t_l + math.pi / 2, math.pi) - math.pi / 2)
    maybe = (delta <= math.radians(config.angle_tol_deg)) | (
        ev.touching[si] & (ev.boxes[si, 2] <= config.stub_ratio * ev.boxes[li, 3]))
    n = len(li)
    out = PairRelations(np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool),
                        np.full(n, np.inf), np.zeros(n))
    sub = np.flatnonzero(maybe)
    if len(sub):
        part = _relations(ev, li[sub], si[sub], config)
        for name in ("continues", "precise", "stub", "residual", "overlap"):
            getattr(out, name)[sub] = getattr(part, name)
    return out


def _relations(ev: Evidence, li: np.ndarray, si: np.ndarray, config: MergeConfig) -> PairRelations:
    L, S = ev.boxes[li], ev.boxes[si]
    sig_l, sig_s = ev.sigma[li], ev.sigma[si]
    delta = np.remainder(S[:, 4] - L[:, 4] + math.pi / 2, math.pi) - math.pi / 2  # in [-pi/2, pi/2)
    cd, sd = np.abs(np.cos(delta)), np.abs(np.sin(delta))
    cos_l, sin_l = np.cos(L[:, 4]), np.sin(L[:, 4])
    dx, dy = S[:, 0] - L[:, 0], S[:, 1] - L[:, 1]
    along = dx * cos_l + dy * sin_l
    across = -dx * sin_l + dy * cos_l
    half_s = (S[:, 2] * cd + S[:, 3] * sd) / 2  # half extent of S along L's axis
    s_lo, s_hi = along - half_s, along + half_s
    l_hi = L[:, 2] / 2
    l_lo = -l_hi
    lo, hi = np.maximum(s_lo, l_lo), np.minimum(s_hi, l_hi)

    # A piece about as long as the other's deck is wide, cut off by a window border near a bridge's
    # end, has no meaningful direction: it is judged by where it lies, not by its angle, and it may
    # join a group but not link two (see attach_stub_groups). A box that touches no window border
    # is not such a piece (it may be a small bridge next to the end of a wide one).
    short = S[:, 2] <= config.stub_ratio * L[:, 3]
    stub = (
        short
        & ev.touching[si]
        & (sig_l <= sig_s)  # judged by the other box's geometry: one at least as precise
        & (L[:, 2] >= 2 * S[:, 2])
        & (S[:, 2] >= config.stub_min * L[:, 3])
        & (np.abs(along) >= l_hi - config.stub_ratio * L[:, 3])  # near an end of L
        & (lo - hi <= config.stub_min * L[:, 3])
        & (np.abs(across) <= config.stub_lateral * L[:, 3])
    )

    # Direction: each box's angle is uncertain by about 2 k sigma / length (its ends move sideways).
    k = config.lateral_k
    angle_tol = np.minimum(
        math.radians(config.angle_base_deg)
        + np.arctan(2 * k * sig_l / np.maximum(L[:, 2], 1e-9))
        + np.arctan(2 * k * sig_s / np.maximum(S[:, 2], 1e-9)),
        math.radians(config.angle_tol_deg),
    )
    aligned = np.abs(delta) <= angle_tol
    # Offset of S's centre line from L's at both ends of their common interval (of the gap when they
    # do not overlap): the largest offset over the interval, since it changes linearly along it.
    slope = np.tan(np.where(aligned, delta, 0.0))
    lateral = np.maximum(np.abs(across + (lo - along) * slope), np.abs(across + (hi - along) * slope))
    lateral_tol = k * (sig_l + sig_s)
    similar = np.abs(S[:, 3] - L[:, 3]) <= config.width_tol * np.maximum(S[:, 3], L[:, 3]) + 2 * (sig_l + sig_s)

    # Ends: S's end on L's +u side is its +u end when the two point the same way.
    same_way = np.cos(S[:, 4] - L[:, 4]) > 0
    s_at_hi = np.where(same_way, 1, 0)
    s_at_lo = 1 - s_at_hi
    cut_l, cut_s = ev.cut[li], ev.cut[si]
    s_cut_hi = np.take_along_axis(cut_s, s_at_hi[:, None], 1)[:, 0]
    s_cut_lo = np.take_along_axis(cut_s, s_at_lo[:, None], 1)[:, 0]
    tol_hi = config.end_k * (ev.end_sigma[li, 1] + np.take_along_axis(ev.end_sigma[si], s_at_hi[:, None], 1)[:, 0])
    tol_lo = config.end_k * (ev.end_sigma[li, 0] + np.take_along_axis(ev.end_sigma[si], s_at_lo[:, None], 1)[:, 0])
    # A real end bounds the bridge: neither box goes on past a real end of the other by more than
    # the ends' uncertainty, and a gap is allowed only between two cut ends, as wide as the boxes'
    # level uncertainty (fragments of one bridge from neighbouring windows overlap). So two boxes
    # with real ends facing each other across a gap are two bridges, whatever the gap. Two aligned
    # boxes that overlap along the deck by more than the ends' uncertainty are one deck whatever
    # their ends say: two bridges in a row do not overlap, and a detector's end a little off its
    # window's border (more than the cut margin) must not make two bridges of one.
    overlap = hi - lo
    extent = (
        (overlap > np.maximum(tol_hi, tol_lo))
        | ((cut_l[:, 1] | (s_hi <= l_hi + tol_hi))
           & (cut_l[:, 0] | (s_lo >= l_lo - tol_lo))
           & (s_cut_hi | (l_hi <= s_hi + tol_hi))
           & (s_cut_lo | (l_lo >= s_lo - tol_lo)))
    ) & (-overlap <= config.end_k * (sig_l + sig_s))
    continues = ~short & aligned & similar & extent & (lateral <= lateral_tol)
    # Two decks side by side are (h1 + h2) / 2 + gap apart; a link whose tolerance could reach across
    # that, from both sides at once, cannot tell them apart. Nor can a link between boxes of unequal
    # precision: the coarser one only attaches to its best partner (see methods).
    precise = (sig_l == sig_s) & (2 * lateral_tol <= np.maximum(S[:, 3], L[:, 3]) + config.twin_gap)
    return PairRelations(continues, precise, stub, lateral / np.maximum(lateral_tol, 1e-9), np.maximum(overlap, 0.0))


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
