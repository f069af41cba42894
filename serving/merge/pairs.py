"""Which detections are near each other, and which of them end up in one group.

Scene-wide merging must compare boxes that touch without forming all N^2 pairs: 100,000 window
detections are common on a large scene, and coarse-level boxes thousands of pixels long lie over
thousands of small ones. Every relation the merge tests needs a characteristic point of one box
(an end, or the centre) inside the other box, grown by a margin, and holds only between boxes of
comparable size (parts of one bridge have about one width; a piece of a bridge is about as long
as the deck is wide). :func:`points_in_boxes` answers exactly that query through a uniform grid
whose cells are sorted by (cell, size class) so that each box reads only the points of the size
classes it asks for, in the cells its oriented outline reaches. :func:`connected_components` is a
vectorised union-find over accepted pairs.
"""

from __future__ import annotations

import numpy as np

N_CLASSES = 32  # size classes floor(log2(length)), clipped to [0, N_CLASSES)
_TABLE_KEYS = 1 << 23  # (cell, class) keys up to which run starts are tabulated (64 MiB of int64)
MAX_ENTRIES = 1 << 19  # (box, cell, class range) look-ups per block of boxes: about 80 MB
MAX_CANDIDATES = 1 << 20  # candidate (box, point) pairs tested at once: about 80 MB
PAIR_CHUNK = 1 << 19  # neighbour pairs whose relations are computed at once: about 120 MB


def size_class(length: np.ndarray) -> np.ndarray:
    """Size class of lengths in pixels: ``floor(log2(length))`` clipped to ``[0, N_CLASSES)``."""
    return np.clip(np.floor(np.log2(np.maximum(length, 1.0))), 0, N_CLASSES - 1).astype(np.int64)


def points_in_boxes(
    boxes: np.ndarray,
    margin: tuple[np.ndarray, np.ndarray],
    ranges: np.ndarray,
    points: np.ndarray,
    point_class: np.ndarray,
    cell: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``(b, p)``: point ``p`` lies in box ``b`` grown by ``margin`` and its class lies in one
    of the box's class ranges.

    ``boxes`` ``(B, 5)`` ``(cx, cy, w, h, theta)``; ``margin`` ``(along, across)``, each ``(B,)``, added
    on both sides along the box's axis and across it; ``ranges`` ``(B, R, 2)`` inclusive class ranges
    ``[lo, hi]`` (an empty range has ``lo > hi``) that must not overlap; ``points`` ``(P, 2)``;
    ``point_class`` ``(P,)`` non-negative integers. Each pair is reported once, boxes in order. ``cell``
    is the grid step; by default the one that minimises an estimate of the work (see _grid_step).

    Memory is bounded whatever the density: boxes are taken in blocks of at most ``MAX_ENTRIES``
    (cell, range) look-ups, and their candidates tested ``MAX_CANDIDATES`` at a time (dense detections,
    from an untrained model or a low score threshold, give tens of millions of candidates: testing
    them at once took 1.7 GB for 214,000 boxes).
    """
    empty = np.zeros(0, dtype=np.int64)
    if len(boxes) == 0 or len(points) == 0:
        return empty, empty
    cx, cy, w, h, t = (boxes[:, k] for k in range(5))
    cos, sin = np.cos(t), np.sin(t)
    half_u, half_v = w / 2 + margin[0], h / 2 + margin[1]
    hx = half_u * np.abs(cos) + half_v * np.abs(sin)
    hy = half_u * np.abs(sin) + half_v * np.abs(cos)
    n_class = int(max(point_class.max(), ranges.max())) + 2
    if cell is None:
        cell = _grid_step(hx, hy, ranges, points, point_class, n_class)
    grid = _PointGrid(points, point_class, cell, n_class)

    # Cells of each box's hull inside the points' grid (the oriented outline is tested per block).
    gx0 = np.clip(np.floor((cx - hx - grid.x0) / cell).astype(np.int64), 0, grid.nx)
    gx1 = np.clip(np.floor((cx + hx - grid.x0) / cell).astype(np.int64), -1, grid.nx - 1)
    gy0 = np.clip(np.floor((cy - hy - grid.y0) / cell).astype(np.int64), 0, grid.ny)
    gy1 = np.clip(np.floor((cy + hy - grid.y0) / cell).astype(np.int64), -1, grid.ny - 1)
    spanx, spany = np.maximum(gx1 - gx0 + 1, 0), np.maximum(gy1 - gy0 + 1, 0)
    # Box rows relative to the grid's origin, in float32 (a rounding of a hundredth of a pixel at
    # 100,000 px is far inside every margin the merge uses), gathered as rows.
    rows = np.stack([cx - grid.x0, cy - grid.y0, cos, sin, half_u, half_v], axis=1)
    box_rows = rows.astype(np.float32)

    found_box, found_point = [], []
    for block in chunk_slices(spanx * spany * ranges.shape[1], MAX_ENTRIES):
        counts = spanx[block] * spany[block]
        box = np.repeat(np.arange(block.start, block.stop), counts)
        local = np.arange(len(box)) - np.repeat(np.cumsum(counts) - counts, counts)
        gx = gx0[box] + local % spanx[box]
        gy = gy0[box] + local // spanx[box]
        # Keep the cells that the box's oriented outline reaches (separating axes of the box; the
        # hull did the cell axes).
        big = (spanx[box] * spany[box]) > 4
        if big.any():
            bb = box[big]
            px = (gx[big] + 0.5) * cell - rows[bb, 0]
            py = (gy[big] + 0.5) * cell - rows[bb, 1]
            c, s = cos[bb], sin[bb]
            r = cell / 2 * (np.abs(c) + np.abs(s))
            reach = (np.abs(px * c + py * s) <= half_u[bb] + r) & (np.abs(-px * s + py * c) <= half_v[bb] + r)
            keep = np.ones(len(box), dtype=bool)
            keep[np.flatnonzero(big)[~reach]] = False
            box, gx, gy = box[keep], gx[keep], gy[keep]
        # The points of each (cell, range): one run of the sorted keys.
        base = ((gy * grid.nx + gx) * n_class)[:, None]
        lo, hi = grid.runs((base + ranges[box, :, 0]).ravel(), (base + ranges[box, :, 1]).ravel())
        n_read = np.maximum(hi - lo, 0)
        entry_box = np.repeat(box, ranges.shape[1])
        for part in chunk_slices(n_read, MAX_CANDIDATES):
            reads = n_read[part]
            pair_box = np.repeat(entry_box[part], reads)
            # Position in the sorted points: each run's start, then consecutive.
            sorted_pos = np.repeat(lo[part] - (np.cumsum(reads) - reads), reads) + np.arange(len(pair_box))
            pb = box_rows[pair_box]
            pp = grid.sorted_points[sorted_pos]
            dx, dy = pp[:, 0] - pb[:, 0], pp[:, 1] - pb[:, 1]
            along = np.abs(dx * pb[:, 2] + dy * pb[:, 3])
            across = np.abs(dy * pb[:, 2] - dx * pb[:, 3])
            inside = (along <= pb[:, 4]) & (across <= pb[:, 5])
            found_box.append(pair_box[inside])
            found_point.append(grid.order[sorted_pos[inside]])
    if not found_box:
        return empty, empty
    return np.concatenate(found_box), np.concatenate(found_point)


class _PointGrid:
    """Points sorted by (grid cell, class), with the start of each key's run of points."""

    def __init__(self, points: np.ndarray, point_class: np.ndarray, cell: float, n_class: int):
        self.x0, self.y0 = points[:, 0].min(), points[:, 1].min()
        pgx = np.floor((points[:, 0] - self.x0) / cell).astype(np.int64)
        pgy = np.floor((points[:, 1] - self.y0) / cell).astype(np.int64)
        self.nx, self.ny = int(pgx.max()) + 1, int(pgy.max()) + 1
        key = (pgy * self.nx + pgx) * n_class + point_class
        self.order = np.argsort(key, kind="stable")
        self.keys = key[self.order]
        self.n_keys = self.nx * self.ny * n_class
        self.sorted_points = (points[self.order] - np.array([self.x0, self.y0])).astype(np.float32)
        self.start = None
        if self.n_keys <= _TABLE_KEYS:
            # Start of every key's run: a lookup table instead of binary searches.
            self.start = np.zeros(self.n_keys + 1, dtype=np.int64)
            np.cumsum(np.bincount(self.keys, minlength=self.n_keys), out=self.start[1:])

    def runs(self, key_lo: np.ndarray, key_hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[lo, hi)`` positions in the sorted points of the keys ``key_lo..key_hi`` (inclusive)."""
        if self.start is None:
            return (np.searchsorted(self.keys, key_lo, side="left"),
                    np.searchsorted(self.keys, key_hi, side="right"))
        return (self.start[np.clip(key_lo, 0, self.n_keys)],
                self.start[np.clip(key_hi + 1, 0, self.n_keys)])


def chunk_slices(sizes: np.ndarray | int, budget: int) -> list[slice]:
    """Consecutive slices of items whose ``sizes`` sum to at most ``budget`` each (an item larger than
    the budget gets a slice of its own); an integer ``sizes`` means that many items of size 1."""
    if isinstance(sizes, (int, np.integer)):
        return [slice(a, min(a + budget, int(sizes))) for a in range(0, int(sizes), budget)]
    ends = np.cumsum(sizes)
    out, start, done = [], 0, 0
    while start < len(ends):
        # The last item that still fits, or at least one item.
        stop = max(int(np.searchsorted(ends, done + budget, side="right")), start + 1)
        out.append(slice(start, stop))
        done, start = int(ends[stop - 1]), stop
    return out


def points_inside(points: np.ndarray, boxes: np.ndarray, margin: np.ndarray) -> np.ndarray:
    """Whether each point lies in its box grown by ``margin`` (rows aligned)."""
    dx, dy = points[:, 0] - boxes[:, 0], points[:, 1] - boxes[:, 1]
    c, s = np.cos(boxes[:, 4]), np.sin(boxes[:, 4])
    along, across = np.abs(dx * c + dy * s), np.abs(-dx * s + dy * c)
    return (along <= boxes[:, 2] / 2 + margin) & (across <= boxes[:, 3] / 2 + margin)


def _grid_step(
    hx: np.ndarray,
    hy: np.ndarray,
    ranges: np.ndarray,
    points: np.ndarray,
    point_class: np.ndarray,
    n_class: int,
) -> float:
    """Grid step minimising the estimated work: cells read by the boxes (each a few binary searches)
    plus points read (the points of the asked classes in those cells, at the mean density). Small
    cells make long boxes read many cells; large ones make small boxes read many points."""
    cum = np.r_[0, np.cumsum(np.bincount(point_class, minlength=n_class))]
    lo, hi = np.clip(ranges[..., 0], 0, n_class - 1), np.clip(ranges[..., 1], -1, n_class - 1)
    share = np.maximum(cum[hi + 1] - cum[lo], 0).sum(1) / len(points)  # (B,) fraction of points asked
    span = np.ptp(points, axis=0) + 1.0
    density = len(points) / (span[0] * span[1])
    steps = 2.0 ** np.arange(3, 14)
    work = [2 * ranges.shape[1] * ((2 * hx / step + 1) * (2 * hy / step + 1)).sum()
            + density * (share * (2 * hx + step) * (2 * hy + step)).sum() for step in steps]
    return float(steps[int(np.argmin(work))])


def connected_components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Component label (the smallest member index) of each of ``n`` nodes joined by edges ``(i, j)``.

    Vectorised union-find: every round hooks the larger root of each edge onto the smaller one, then
    compresses paths by pointer jumping. Rounds grow with the logarithm of the longest chain.
    """
    parent = np.arange(n)
    while len(i):
        ri, rj = parent[i], parent[j]
        differ = ri != rj
        if not differ.any():
            break
        i, j, ri, rj = i[differ], j[differ], ri[differ], rj[differ]
        np.minimum.at(parent, np.maximum(ri, rj), np.minimum(ri, rj))
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return parent
