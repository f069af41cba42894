"""The holistic merge's last pass: greedy NMS over fused boxes, by IoU or by containment."""

from __future__ import annotations

import numpy as np
import torch

from hbdnet.boxes.convention import obb_to_poly
from hbdnet.boxes.iou import box_iou_rotated
from serving.merge.config import MergeConfig
from serving.merge.pairs import PAIR_CHUNK, chunk_slices, points_in_boxes, points_inside, size_class


def suppress(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, config: MergeConfig,
    tiebreak: np.ndarray | None = None, piece: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy NMS by IoU or containment; kept indices in rank order: descending score, then
    descending ``tiebreak`` (a box never suppresses one that ranks above it).

    Either relation needs more than half of the lower-ranked box inside the other, hence its centre
    inside it (a convex box cut through its centre leaves half of a centrally symmetric one on each
    side), and a lower-ranked box at least half as long as the other is wide: a detection that short
    is not a piece of that bridge, and is left alone, unless it is a ``piece`` (a detection that
    touches its window's border: the end of a bridge cut off by the window may be that short).
    """
    n = len(scores)
    tiebreak = np.zeros(n) if tiebreak is None else np.asarray(tiebreak)
    order = np.lexsort((np.arange(n), -tiebreak, -scores))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    w, h = boxes[:, 2], boxes[:, 3]
    # A box with a fraction f of itself inside another is at most about diagonal / f long.
    reach = np.hypot(w, h) / min(config.contain_iof, config.duplicate_iou)
    zero = (np.zeros(n), np.zeros(n))
    ranges = np.stack([size_class(0.5 * h), size_class(reach) + 1], axis=1)[:, None, :]
    top, low = points_in_boxes(boxes, zero, ranges, boxes[:, :2], size_class(w))
    keep = w[low] >= 0.5 * h[top]
    if piece is not None and np.any(piece):
        pieces = np.flatnonzero(piece)
        short = np.stack([np.zeros(n, dtype=np.int64), size_class(0.5 * h)], axis=1)[:, None, :]
        pt, pl = points_in_boxes(boxes, zero, short, boxes[pieces, :2], size_class(w[pieces]))
        pl = pieces[pl]
        top, low = np.concatenate([top[keep], pt]), np.concatenate([low[keep], pl])
        keep = np.ones(len(top), dtype=bool)
    keep &= rank[low] > rank[top]
    if not config.class_agnostic:
        keep &= labels[low] == labels[top]
    top, low = top[keep], low[keep]
    hit = np.zeros(len(top), dtype=bool)
    for part in chunk_slices(len(top), PAIR_CHUNK):  # bounded temporaries however dense the boxes
        hit[part] = _suppresses(boxes, top[part], low[part], config)
    return order[greedy_nms(rank[top[hit]], rank[low[hit]], n)]


def _suppresses(boxes: np.ndarray, top: np.ndarray, low: np.ndarray, config: MergeConfig) -> np.ndarray:
    """Whether box ``top`` suppresses box ``low``, pair by pair: IoU above ``duplicate_iou``, or at least
    ``contain_iof`` of ``low`` inside ``top`` with ``low`` at least half as wide (a narrower box
    inside is a deck or lane beside others, not a piece)."""
    area = boxes[:, 2] * boxes[:, 3]
    inter = area[low].copy()
    # Fully inside: the intersection is the whole lower box; clip only the others.
    corners = obb_to_poly(torch.from_numpy(boxes[low])).numpy().reshape(-1, 4, 2)
    whole = np.ones(len(low), dtype=bool)
    for k in range(4):
        whole &= points_inside(corners[:, k], boxes[top], np.zeros(len(top)))
    part = np.flatnonzero(~whole)
    if len(part):
        lower, upper = torch.from_numpy(boxes[low[part]]), torch.from_numpy(boxes[top[part]])
        iof = box_iou_rotated(lower, upper, mode="iof", aligned=True).numpy()
        inter[part] = iof * area[low[part]]
    iou = inter / np.maximum(area[low] + area[top] - inter, 1e-12)
    as_wide = boxes[low, 3] >= config.piece_width * boxes[top, 3]
    return (iou > config.duplicate_iou) | ((inter >= config.contain_iof * area[low]) & as_wide)


def greedy_nms(top: np.ndarray, low: np.ndarray, n: int, max_rounds: int = 16) -> np.ndarray:
    """Greedy NMS decisions from suppression pairs given in score ranks (``top`` outranks ``low``).

    A box is kept when every higher-ranked box that would suppress it is itself suppressed, and
    suppressed as soon as one of them is kept. Deciding, round by round, all boxes whose
    suppressors are decided gives exactly the sequential result; the rounds follow chains of
    overlapping boxes, which are short. After ``max_rounds`` the rest is finished one box at a time.
    Returns the kept ranks in increasing order.
    """
    state = np.zeros(n, dtype=np.int8)  # 0 undecided, 1 kept, -1 suppressed
    for _ in range(max_rounds):
        # A box with a kept suppressor is suppressed; one with an undecided suppressor waits.
        killed = np.zeros(n, dtype=bool)
        killed[low[state[top] == 1]] = True
        waiting = np.zeros(n, dtype=bool)
        waiting[low[state[top] == 0]] = True
        open_ = state == 0
        state[open_ & killed] = -1
        state[open_ & ~killed & ~waiting] = 1
        live = (state[low] == 0) & (state[top] != -1)
        top, low = top[live], low[live]
        if not (state == 0).any():
            return np.flatnonzero(state == 1)
    # Long chains: visit the undecided boxes in rank order, each suppressing its lower neighbours
    # (after the boxes kept in the last round have suppressed theirs).
    state[low[(state[top] == 1) & (state[low] == 0)]] = -1
    order = np.argsort(top, kind="stable")
    top, low = top[order], low[order]
    start = np.searchsorted(top, np.arange(n + 1))
    for r in np.flatnonzero(state == 0):
        if state[r] == 0:
            state[r] = 1
            hit = low[start[r] : start[r + 1]]
            state[hit[state[hit] == 0]] = -1
    return np.flatnonzero(state == 1)
