"""Greedy non-maximum suppression for oriented and axis-aligned boxes, sparse and exact.

Semantics (mmcv ``nms_rotated`` / ``torchvision.ops.nms``): boxes are visited in decreasing score
order, ties broken by the lower index first; a box is kept unless its IoU with an already kept box
is strictly greater than ``iou_threshold``. The result lists the kept indices in that order.

Dense NMS costs N^2 IoUs; detections over a scene are mostly far apart, so here an IoU is computed
only where it can matter:

1. boxes are binned on a uniform grid by their axis-aligned hulls; two boxes are candidates when
   they share a cell, and each candidate pair is produced once (:class:`_Grid`); batched NMS over a
   few categories gives each category its own grid, whose pitch suits its boxes;
2. ranks are settled in blocks: the pairs inside a block decide which of its boxes survive, then
   only the surviving boxes are paired with later boxes not suppressed yet;
3. cheap bounds drop most candidates: IoU <= min(a1, a2) / max(a1, a2); the overlap of the hulls
   bounds the intersection; for oriented boxes the overlaps with each other's hull and inscribed
   rectangle in each box's frame bound it from above and below;
4. the pairs left get their exact IoU (:func:`hbdnet.boxes.iou.intersection_area_rotated`);
5. the greedy pass of a block runs on the CPU over its suppression edges, vectorised.

Horizontal NMS on the CPU (the RPN's proposals) takes a shorter way when the pairs are few enough:
a sweep over the boxes sorted by left edge finds, for each box, the only boxes that can exceed the
threshold with it; their IoUs are computed at once and step 5 resolves them
(:func:`_sweep_horizontal`). Both ways run on one CPU thread (:func:`hbdnet.threads.one_cpu_thread`).

Steps 1-4 run on the boxes' device. Decisions are those of the exact float64 IoU on CPU; on CUDA
with float32 boxes the IoU is float32 (within ~1e-5), so a pair that close to the threshold may
go either way, as it may with mmcv's float32 kernels.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from hbdnet.boxes.iou import compute_dtype, flat_nonzero, intersection_area_rotated, padded_hulls
from hbdnet.threads import one_cpu_thread

# Candidate pairs expanded at once (each costs ~100 bytes across the temporaries).
_PAIR_BUDGET = 1 << 20
# Most ranks settled per block. All candidate pairs inside a block are tested, so a block also ends
# before its boxes share cells with _PAIR_BUDGET higher-ranked boxes; across blocks only the pairs
# of kept boxes are tested.
_BLOCK_RANKS = 8192
# Vectorised rounds of the greedy pass before the rest is finished one box at a time.
_MAX_ROUNDS = 16
# Batched NMS over at most this many categories runs one category at a time (see _greedy_nms).
_MAX_SPLIT_GROUPS = 64
# Horizontal NMS on the CPU of up to this many boxes with up to this many pairs to test is a sweep
# over the boxes sorted by left edge (see _sweep_horizontal).
_SWEEP_MAX_BOXES = 50000
_SWEEP_MAX_PAIRS = 1 << 23
# Relative slack of the bounds, far above their rounding error: for the float32 copies that the
# first filters read (hulls rounded outwards), and for the frame bounds in each compute dtype.
_FILTER_SLACK = 1e-5
_BOUND_SLACK = {torch.float64: 1e-9, torch.float32: 1e-4}

# exceeds(s, t, area_s, area_t): IoU > threshold for pairs of box ranks (bool, like s).
Exceeds = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def nms_rotated(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS of ``(N, 5)`` oriented boxes (any representation); kept indices, int64, by score."""
    return batched_nms_rotated(boxes, scores, None, iou_threshold)


def batched_nms_rotated(boxes: Tensor, scores: Tensor, idxs: Tensor | None, iou_threshold: float) -> Tensor:
    """NMS of ``(N, 5)`` oriented boxes done independently within each category of ``idxs`` ``(N,)``.

    Boxes of different categories never suppress each other; no coordinate offsets are involved,
    so the result is exactly that of running :func:`nms_rotated` per category and merging by score.
    ``idxs=None`` is plain :func:`nms_rotated`.
    """
    _check(boxes, scores, idxs, 5, iou_threshold)
    order = _by_score(scores)
    b = boxes.to(compute_dtype(boxes)).index_select(0, order)
    areas = b[:, 2].abs() * b[:, 3].abs()

    def exceeds(i: Tensor, j: Tensor, ai: Tensor, aj: Tensor) -> Tensor:
        bi, bj = b.index_select(0, i), b.index_select(0, j)
        upper, lower = _frame_bounds(bi, bj)
        slack = _BOUND_SLACK[b.dtype]
        # Integrate only the pairs that the bounds leave open.
        sure = _iou(lower, ai, aj) * (1 - slack) > iou_threshold
        top = torch.minimum(upper, torch.minimum(ai, aj))
        open_ = flat_nonzero((top * (1 + slack) > iou_threshold * (ai + aj - top)) & ~sure)
        inter = intersection_area_rotated(bi.index_select(0, open_), bj.index_select(0, open_))
        sure[open_] = _iou(inter, ai.index_select(0, open_), aj.index_select(0, open_)) > iou_threshold
        return sure

    with one_cpu_thread(b.device):
        return order[_greedy_nms(padded_hulls(b), areas, _ranked(idxs, order), iou_threshold, exceeds)]


def nms_horizontal(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS of ``(N, 4)`` boxes ``(x1, y1, x2, y2)``, areas ``(x2 - x1) * (y2 - y1)`` (offset 0)."""
    return batched_nms_horizontal(boxes, scores, None, iou_threshold)


def batched_nms_horizontal(boxes: Tensor, scores: Tensor, idxs: Tensor | None, iou_threshold: float) -> Tensor:
    """Horizontal NMS done independently within each category of ``idxs``."""
    _check(boxes, scores, idxs, 4, iou_threshold)
    if bool(((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any()):
        raise ValueError("horizontal boxes must have x2 >= x1 and y2 >= y1")
    order = _by_score(scores)
    b = boxes.to(compute_dtype(boxes)).index_select(0, order)
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])

    def exceeds(i: Tensor, j: Tensor, ai: Tensor, aj: Tensor) -> Tensor:
        bi, bj = b.index_select(0, i), b.index_select(0, j)
        iw = (torch.minimum(bi[:, 2], bj[:, 2]) - torch.maximum(bi[:, 0], bj[:, 0])).clamp(min=0)
        ih = (torch.minimum(bi[:, 3], bj[:, 3]) - torch.maximum(bi[:, 1], bj[:, 1])).clamp(min=0)
        return _iou(iw * ih, ai, aj) > iou_threshold

    groups = _ranked(idxs, order)
    with one_cpu_thread(b.device):
        if b.device.type == "cpu" and b.shape[0] <= _SWEEP_MAX_BOXES:
            ranked_groups = None if groups is None else groups.numpy()
            kept = _sweep_horizontal(b.numpy(), areas.numpy(), ranked_groups, iou_threshold)
            if kept is not None:
                return order[torch.from_numpy(kept)]
        return order[_greedy_nms(b, areas, groups, iou_threshold, exceeds)]


def _sweep_horizontal(
    b: np.ndarray, areas: np.ndarray, groups: np.ndarray | None, iou_threshold: float
) -> np.ndarray | None:
    """Kept ranks, ascending, of float64 ``x1, y1, x2, y2`` boxes in rank order, or None when there
    would be more than ``_SWEEP_MAX_PAIRS`` pairs to test (then the grid does it).

    Only boxes whose left edges lie in a window around box i's can exceed the threshold with it: in
    the boxes sorted by left edge, a range found by binary search. Those pairs (of one category) get
    the IoU test of :func:`batched_nms_horizontal`, same arithmetic, all at once, and
    :func:`_resolve` makes the greedy pass over the pairs that exceed the threshold.
    """
    n = b.shape[0]
    if groups is not None:
        kept = []
        for g in np.unique(groups):
            idx = np.flatnonzero(groups == g)
            sub = _sweep_horizontal(b[idx], areas[idx], None, iou_threshold)
            if sub is None:
                return None
            kept.append(idx[sub])
        return np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = (np.ascontiguousarray(b[:, k]) for k in range(4))
    by_x = np.argsort(x1, kind="stable")
    sorted_x1 = x1[by_x]
    # IoU > t needs an intersection above t * area_i, so an overlap in x above t * w_i: box j's left
    # edge lies before x2_i - t w_i and, its width being at most the widest, after x1_i + t w_i - widest.
    # The margins (relative 1e-9, far above rounding) keep every pair whose computed IoU can exceed t.
    width = x2 - x1
    widest = float(width.max()) * (1 + 1e-9) + 1e-9
    inset = iou_threshold * width * (1 - 1e-9)
    first = np.searchsorted(sorted_x1, x1 + inset - widest, side="left")
    count = np.maximum(np.searchsorted(sorted_x1, x2 - inset, side="right") - first, 0)
    total = int(count.sum())
    if total > _SWEEP_MAX_PAIRS:
        return None
    owner = np.repeat(np.arange(n), count)
    start = np.repeat(first - (np.cumsum(count) - count), count)
    partner = by_x[start + np.arange(total)]
    # The same bound in y, as a filter on those pairs.
    height = y2 - y1
    tallest = float(height.max()) * (1 + 1e-9) + 1e-9
    y_inset = iou_threshold * height * (1 - 1e-9)
    partner_y1 = y1[partner]
    keep = partner > owner
    keep &= partner_y1 >= (y1 + y_inset - tallest)[owner]
    keep &= partner_y1 <= (y2 - y_inset)[owner]
    s, t = owner[keep], partner[keep]
    iw = np.maximum(np.minimum(x2[s], x2[t]) - np.maximum(x1[s], x1[t]), 0.0)
    ih = np.maximum(np.minimum(y2[s], y2[t]) - np.maximum(y1[s], y1[t]), 0.0)
    inter = iw * ih
    union = areas[s] + areas[t] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        # inter / 0 is nan (a zero-area pair), and nan > threshold is False: IoU 0, as _iou says.
        edge = inter / union > iou_threshold
    return np.flatnonzero(_resolve(np.zeros(n, dtype=bool), s[edge], t[edge]))


def _check(boxes: Tensor, scores: Tensor, idxs: Tensor | None, width: int, iou_threshold: float) -> None:
    if boxes.ndim != 2 or boxes.shape[1] != width:
        raise ValueError(f"boxes must be (N, {width}), got {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1] or (idxs is not None and idxs.shape != boxes.shape[:1]):
        raise ValueError("scores (and idxs) must be (N,) for (N, ...) boxes")
    if not bool(torch.isfinite(boxes).all()):
        raise ValueError("boxes must be finite")
    # A negative threshold would make every pair, even far apart, suppress: surely a mistake.
    if not iou_threshold >= 0:
        raise ValueError(f"iou_threshold must be >= 0, got {iou_threshold}")


def _by_score(scores: Tensor) -> Tensor:
    """Indices by decreasing score, ties in input order: position in this order is a box's rank."""
    return torch.sort(scores, descending=True, stable=True).indices


def _ranked(idxs: Tensor | None, order: Tensor) -> Tensor | None:
    return None if idxs is None else idxs.to(order.device).index_select(0, order)


def _iou(inter: Tensor, area1: Tensor, area2: Tensor) -> Tensor:
    union = area1 + area2 - inter
    ok = union > 0
    return torch.where(ok, inter / torch.where(ok, union, torch.ones_like(union)), torch.zeros_like(inter))


def _greedy_nms(hulls: Tensor, areas: Tensor, groups: Tensor | None, iou_threshold: float, exceeds: Exceeds) -> Tensor:
    """Kept ranks, ascending, of boxes given in rank order: hulls ``(N, 4)`` containing them, areas,
    optional categories, and an exact IoU test.

    Ranks are settled a block at a time: the block's own pairs decide which of its boxes are kept
    (given what earlier blocks suppressed), then only the kept ones are paired with the later boxes
    still standing. Pairs of a suppressed box with later boxes are never formed.
    """
    device = hulls.device
    n = hulls.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    if groups is not None:
        labels, inverse = torch.unique(groups, return_inverse=True)
        if labels.numel() == 1:
            groups = None
        elif labels.numel() <= _MAX_SPLIT_GROUPS:
            # Categories never interact, and the grid's pitch follows the typical box size: on boxes of
            # mixed categories of very different sizes (the RPN's levels) one grid would pair nearly
            # every small box with every other.
            kept = []
            for g in range(labels.numel()):
                idx = flat_nonzero(inverse == g).to(device)  # ascending: still in rank order

                def exceeds_in(s: Tensor, t: Tensor, a_s: Tensor, a_t: Tensor, idx: Tensor = idx) -> Tensor:
                    return exceeds(idx.index_select(0, s), idx.index_select(0, t), a_s, a_t)

                sub = _greedy_nms(hulls.index_select(0, idx), areas.index_select(0, idx), None, iou_threshold,
                                  exceeds_in)
                kept.append(idx.index_select(0, sub))
            return torch.cat(kept).sort().values

    # The first filters see every candidate pair, so they read float32 copies (half the memory
    # traffic of the gathers); the hulls are rounded outwards so that they still contain the boxes.
    hulls = _round_outwards(hulls)
    areas32 = areas.float()

    def suppressing(s: Tensor, t: Tensor, live: Tensor) -> tuple[Tensor, Tensor]:
        """The pairs among ``live`` ones (mask) whose IoU exceeds the threshold."""
        # Cheapest tests first: IoU <= min(a1, a2) / max(a1, a2) rules out most pairs of a big and
        # a small box without touching their hulls.
        a_s, a_t = areas32.index_select(0, s), areas32.index_select(0, t)
        live &= torch.minimum(a_s, a_t) * (1 + _FILTER_SLACK) > iou_threshold * torch.maximum(a_s, a_t)
        if groups is not None:
            live &= groups.index_select(0, s) == groups.index_select(0, t)
        s, t, a_s, a_t = _take(live, s, t, a_s, a_t)
        may = _hull_bound_exceeds(hulls.index_select(0, s), hulls.index_select(0, t), a_s, a_t, iou_threshold)
        s, t = _take(may, s, t)
        return _take(exceeds(s, t, areas.index_select(0, s), areas.index_select(0, t)), s, t)

    grid = _Grid(hulls, _BLOCK_RANKS, _PAIR_BUDGET)
    suppressed = torch.zeros(n, dtype=torch.bool, device=device)
    kept = np.zeros(n, dtype=bool)
    for r0, r1 in grid.blocks:
        ent = grid.entries_of(r0, r1)
        # The block's own pairs, among boxes that earlier kept boxes left alone.
        s, t = grid.block_partners(ent)
        s, t = suppressing(s, t, ~(suppressed.index_select(0, s) | suppressed.index_select(0, t)))
        block_kept = _resolve(suppressed[r0:r1].cpu().numpy(), (s - r0).cpu().numpy(), (t - r0).cpu().numpy())
        kept[r0:r1] = block_kept
        # The kept boxes against all later boxes still standing.
        ent = ent[torch.from_numpy(block_kept).to(device)[(grid.box_a[ent] - r0).long()]]
        for s, t in grid.later_partners(ent, _PAIR_BUDGET):
            _, t = suppressing(s, t, ~suppressed.index_select(0, t))
            suppressed[t.long()] = True
    return torch.from_numpy(np.flatnonzero(kept)).to(device)


def _round_outwards(hulls: Tensor) -> Tensor:
    """float32 copy of ``(x1, y1, x2, y2)`` rows that contains the original boxes."""
    h = hulls.float()
    lo, hi = h[:, :2], h[:, 2:]
    lo = torch.where(lo.double() > hulls[:, :2], torch.nextafter(lo, torch.full_like(lo, -torch.inf)), lo)
    hi = torch.where(hi.double() < hulls[:, 2:], torch.nextafter(hi, torch.full_like(hi, torch.inf)), hi)
    return torch.cat([lo, hi], 1)


def _take(mask: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
    keep = flat_nonzero(mask)
    return tuple(x.index_select(0, keep) for x in tensors)


def _hull_bound_exceeds(hs: Tensor, ht: Tensor, a_s: Tensor, a_t: Tensor, iou_threshold: float) -> Tensor:
    """False where IoU <= threshold for sure: the intersection is at most the smaller area and the
    overlap of the hulls ``hs``, ``ht``. Pairs whose hulls do not overlap, and zero-area boxes, fail."""
    iw = (torch.minimum(hs[:, 2], ht[:, 2]) - torch.maximum(hs[:, 0], ht[:, 0])).clamp(min=0)
    ih = (torch.minimum(hs[:, 3], ht[:, 3]) - torch.maximum(hs[:, 1], ht[:, 1])).clamp(min=0)
    top = torch.minimum(torch.minimum(a_s, a_t), iw * ih)
    return (top * (1 + _FILTER_SLACK) > iou_threshold * (a_s + a_t - top)) & (top > 0)


def _frame_bounds(b1: Tensor, b2: Tensor) -> tuple[Tensor, Tensor]:
    """Cheap upper and lower bounds on the intersection areas of oriented pairs.

    In each box's own frame the box is axis-aligned. There the other box lies within its
    axis-aligned hull and contains the axis-aligned rectangle inscribed about its centre that
    touches all four of its sides; the overlaps of the frame box with those two rectangles bound
    the intersection from above and below. Each bound is the tighter of the two frames.
    """
    dx, dy = b2[:, 0] - b1[:, 0], b2[:, 1] - b1[:, 1]
    dt = b2[:, 4] - b1[:, 4]
    acos, asin = torch.cos(dt).abs(), torch.sin(dt).abs()
    # Inscribed rectangle of a box turned by dt, corners on all four sides: the solution of
    # c x + s y = w, s x + c y = h (c, s = |cos dt|, |sin dt|); none where the box is too thin for
    # that turn (a side would be <= 0) or at 45 degrees.
    det = acos * acos - asin * asin
    w1, h1, w2, h2 = b1[:, 2].abs(), b1[:, 3].abs(), b2[:, 2].abs(), b2[:, 3].abs()

    def overlap(px: Tensor, py: Tensor, w: Tensor, h: Tensor, ox: Tensor, oy: Tensor) -> Tensor:
        # Frame box w x h about the origin and a rectangle ox x oy about (px, py).
        ow = (torch.minimum(px + ox / 2, w / 2) - torch.maximum(px - ox / 2, -w / 2)).clamp(min=0)
        oh = (torch.minimum(py + oy / 2, h / 2) - torch.maximum(py - oy / 2, -h / 2)).clamp(min=0)
        return ow * oh

    def in_frame(
        theta: Tensor, px: Tensor, py: Tensor, w: Tensor, h: Tensor, wo: Tensor, ho: Tensor
    ) -> tuple[Tensor, Tensor]:
        c, s = torch.cos(theta), torch.sin(theta)
        x, y = c * px + s * py, c * py - s * px
        upper = overlap(x, y, w, h, wo * acos + ho * asin, wo * asin + ho * acos)
        iw, ih = (acos * wo - asin * ho) / det, (acos * ho - asin * wo) / det
        ok = (iw > 0) & (ih > 0) & (det != 0)
        lower = torch.where(ok, overlap(x, y, w, h, iw, ih), 0.0)
        return upper, lower

    up1, low1 = in_frame(b1[:, 4], dx, dy, w1, h1, w2, h2)
    up2, low2 = in_frame(b2[:, 4], -dx, -dy, w2, h2, w1, h1)
    return torch.minimum(up1, up2), torch.maximum(low1, low2)


class _Grid:
    """Boxes binned on a uniform grid by their hulls, and the pairs of boxes that share a cell.

    Each pair is produced once, in the cell holding the low corner of the two hulls' overlap: that
    cell is in the first column of one of the two boxes and in the first row of one of them. So an
    entry (box, cell) has a category (bit 1: the cell is in its box's first column, bit 0: first
    row) and pairs only with entries of the categories that complete its own.

    Entries are kept in two orders: A, by (cell, rank), and B, by (cell, category, rank). In B the
    partners of an entry in one category and one rank range (its own block before it, or all
    later blocks) are a contiguous run, whose bounds are counts of categories along order A.
    """

    def __init__(self, hulls: Tensor, block_ranks: int, block_pairs: int) -> None:
        n, device = hulls.shape[0], hulls.device
        self.origin = hulls[:, :2].amin(0)
        self.cell = _cell_size(hulls)
        while True:
            g0 = self._cell_of(hulls[:, :2])
            g1 = self._cell_of(hulls[:, 2:])
            span = g1 - g0 + 1  # (N, 2)
            per_box = span[:, 0] * span[:, 1]
            # Widely mixed sizes could make the small boxes' pitch cover the big ones many times over.
            if int(per_box.sum()) <= 16 * n + 4096:
                break
            self.cell = self.cell * 2
        box = torch.repeat_interleave(torch.arange(n, device=device, dtype=torch.int32), per_box)  # by rank
        e = box.shape[0]
        pos = torch.arange(e + 1, device=device)
        k = pos[:-1] - (per_box.cumsum(0) - per_box).index_select(0, box)
        x0, y0, sx = (g0[:, 0].index_select(0, box), g0[:, 1].index_select(0, box), span[:, 0].index_select(0, box))
        gx, gy = x0 + k % sx, y0 + k // sx
        cell = gy * (int(g1[:, 0].max()) + 1) + gx
        category = (gx == x0).long() * 2 + (gy == y0).long()

        order_a = torch.sort(cell * n + box.long()).indices
        self.box_a = box.index_select(0, order_a)
        cell, self.category = cell.index_select(0, order_a), category.index_select(0, order_a)

        new_cell = torch.ones(e, dtype=torch.bool, device=device)
        new_cell[1:] = cell[1:] != cell[:-1]
        cell_first = torch.where(new_cell, pos[:-1], 0).cummax(0).values
        # Blocks of ranks: at most block_ranks, and about block_pairs higher-ranked cell mates.
        mates = torch.zeros(n, dtype=torch.long, device=device).index_add_(0, self.box_a.long(), pos[:-1] - cell_first)
        self.blocks = _blocks(mates.cumsum(0).cpu().numpy(), block_ranks, block_pairs)
        block_of = np.zeros(n, dtype=np.int64)
        for i, (r0, r1) in enumerate(self.blocks):
            block_of[r0:r1] = i
        block = torch.from_numpy(block_of).to(device).index_select(0, self.box_a)

        def segments(new: Tensor) -> tuple[Tensor, Tensor]:
            """Start and end (exclusive) of each entry's segment, ``new`` marking segment starts."""
            start = torch.where(new, pos[:-1], 0).cummax(0).values
            starts = torch.cat([flat_nonzero(new).to(device), pos[-1:]])
            return start, starts[1:].index_select(0, new.cumsum(0) - 1)

        new_block = new_cell.clone()
        new_block[1:] |= block[1:] != block[:-1]
        self.cell_start, self.cell_end = segments(new_cell)
        self.block_start, self.block_end = segments(new_block)
        # Entries of each category before each position of order A. (int32 halves the traffic.)
        self.before = torch.zeros(e + 1, 4, dtype=torch.int32, device=device)
        self.before[1:] = torch.nn.functional.one_hot(self.category, 4).cumsum(0, dtype=torch.int32)
        # completes[a, b]: an entry of category a pairs with entries of category b.
        cats = torch.arange(4, device=device)
        self.completes = ((cats[:, None] | cats[None, :]) == 3).to(torch.int32)

        # Position in order B: the cell's start, the entries of lower categories, the earlier ones of its own.
        base = self.before.index_select(0, self.cell_start)
        in_cell = self.before.index_select(0, self.cell_end) - base
        own = self.category[:, None]
        lower = ((in_cell.cumsum(1, dtype=torch.int32) - in_cell) + (self.before[:-1] - base)).gather(1, own)[:, 0]
        self.box_b = torch.empty_like(self.box_a)
        self.box_b[self.cell_start + lower] = self.box_a

        # Entries were generated grouped by rank: those of ranks [r0, r1) are a slice there.
        self.generated_to_a = torch.empty_like(order_a)
        self.generated_to_a[order_a] = pos[:-1]
        self.box_ptr = torch.zeros(n + 1, dtype=torch.long, device=device)
        self.box_ptr[1:] = per_box.cumsum(0)

    def _cell_of(self, xy: Tensor) -> Tensor:
        return torch.floor((xy - self.origin) / self.cell).long()

    def entries_of(self, r0: int, r1: int) -> Tensor:
        """Positions in order A of the entries of ranks ``[r0, r1)``."""
        return self.generated_to_a[self.box_ptr[r0] : self.box_ptr[r1]]

    def _runs(self, ent: Tensor, within_block: bool) -> tuple[Tensor, Tensor]:
        """Start (in order B) and length of the partner run of each entry in each category, ``(E', 4)``:
        the higher-ranked entries of its own block, or the entries of later blocks."""
        cell_start = self.cell_start.index_select(0, ent)
        base = self.before.index_select(0, cell_start)
        in_cell = self.before.index_select(0, self.cell_end.index_select(0, ent)) - base
        run = cell_start[:, None] + (in_cell.cumsum(1, dtype=torch.int32) - in_cell)
        allowed = self.completes.index_select(0, self.category.index_select(0, ent))
        if within_block:
            lo = self.before.index_select(0, self.block_start.index_select(0, ent)) - base
            hi = self.before.index_select(0, ent) - base
        else:
            lo = self.before.index_select(0, self.block_end.index_select(0, ent)) - base
            hi = in_cell
        return run + lo, (hi - lo) * allowed

    def _pairs(self, ent: Tensor, start: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
        """The entries' own boxes and their partners' boxes, one row per partner."""
        own = self.box_a.index_select(0, ent)[:, None].expand(-1, 4).reshape(-1)
        start, count, own = _take(count.reshape(-1) > 0, start.reshape(-1), count.reshape(-1), own)
        pos, own = _ragged(start.int(), count.int(), own)
        return own, self.box_b.index_select(0, pos)

    def block_partners(self, ent: Tensor) -> tuple[Tensor, Tensor]:
        """Pairs ``(s, t)`` of ranks, ``s < t``, where ``t`` is the box of one of the entries ``ent``
        (positions in order A) and ``s`` a higher-ranked box of the same block."""
        t, s = self._pairs(ent, *self._runs(ent, within_block=True))
        return s, t

    def later_partners(self, ent: Tensor, budget: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Pairs ``(s, t)`` where ``s`` is the box of one of the entries ``ent`` and ``t`` a box of a
        later block, in pieces of about ``budget`` pairs."""
        start, count = self._runs(ent, within_block=False)
        cum = count.sum(1).cumsum(0).cpu().numpy()
        i = 0
        while i < ent.shape[0]:
            base = cum[i - 1] if i else 0
            j = max(int(np.searchsorted(cum, base + budget, side="right")), i + 1)
            yield self._pairs(ent[i:j], start[i:j], count[i:j])
            i = j


def _blocks(cum_mates: np.ndarray, max_ranks: int, max_pairs: int) -> list[tuple[int, int]]:
    """Consecutive rank ranges of at most ``max_ranks`` ranks and about ``max_pairs`` mates each."""
    n = cum_mates.shape[0]
    out, r0 = [], 0
    while r0 < n:
        base = cum_mates[r0 - 1] if r0 else 0
        r1 = max(int(np.searchsorted(cum_mates, base + max_pairs, side="right")), r0 + 1)
        r1 = min(r1, r0 + max_ranks, n)
        out.append((r0, r1))
        r0 = r1
    return out


def _ragged(start: Tensor, count: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
    """Concatenated ranges ``start[j] + 0..count[j]-1`` (``count > 0``) and ``label[j]`` repeated along.

    Built as running sums of jumps placed at the range starts: cheaper than repeat_interleave.
    """
    first = count.cumsum(0, dtype=count.dtype) - count
    total = int(count.sum()) if count.numel() else 0
    step = torch.ones(total, dtype=start.dtype, device=start.device)
    jump = torch.zeros(total, dtype=label.dtype, device=label.device)
    if total:
        # Range j starts where range j - 1 ended (its last value plus one) plus a jump.
        end_prev = torch.cat([start.new_zeros(1), (start + count)[:-1]])
        first = first.long()
        step.index_copy_(0, first, start - end_prev + 1)
        jump.index_copy_(0, first, label - torch.cat([label.new_zeros(1), label[:-1]]))
    return step.cumsum(0, dtype=step.dtype) - 1, jump.cumsum(0, dtype=jump.dtype)


def _cell_size(hulls: Tensor) -> Tensor:
    """Grid pitch: three times the median hull side, so most boxes touch at most four cells; large enough
    that the biggest box spans at most 16 cells a side and the whole set at most 4096."""
    side = (hulls[:, 2:] - hulls[:, :2]).amax(1)
    extent = (hulls[:, 2:].amax(0) - hulls[:, :2].amin(0)).amax()
    return torch.stack([3 * side.median(), side.max() / 16, extent / 4096, torch.ones_like(extent) * 1e-6]).amax()


def _resolve(suppressed: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Greedy pass over one block: which boxes are kept.

    ``suppressed`` marks boxes already suppressed by kept boxes of earlier blocks; ``src -> dst``
    (local ranks, ``src < dst``) are the block's own suppression edges. A box is kept iff no kept box
    of higher rank suppresses it. That recursion is evaluated a layer at a time, vectorised: a box
    is settled once one of its suppressors is kept (suppressed) or all are suppressed (kept). Chains
    where each box waits on the previous one are finished by a plain loop.
    """
    undecided, kept_state, suppressed_state = 0, 1, 2
    state = np.where(suppressed, suppressed_state, undecided).astype(np.int8)
    for _ in range(_MAX_ROUNDS):
        live = (state[src] != suppressed_state) & (state[dst] == undecided)
        src, dst = src[live], dst[live]
        hit = np.zeros(state.shape[0], dtype=bool)
        hit[dst[state[src] == kept_state]] = True
        waiting = np.zeros(state.shape[0], dtype=bool)
        waiting[dst[state[src] == undecided]] = True
        open_ = state == undecided
        state[open_ & hit] = suppressed_state
        state[open_ & ~hit & ~waiting] = kept_state
        if not (state == undecided).any():
            return state == kept_state
    # Leftover chains: sources in rank order; each one still unsuppressed is kept and suppresses.
    # Boxes kept in the last round have not suppressed anything yet, so their edges stay in.
    live = (state[src] != suppressed_state) & (state[dst] == undecided)
    src, dst = src[live], dst[live]
    order = np.argsort(src, kind="stable")
    src, dst = src[order].tolist(), dst[order].tolist()
    out = (state == suppressed_state).tolist()
    for a, b in zip(src, dst):
        if not out[a]:
            out[b] = True
    return ~np.asarray(out, dtype=bool)
