"""Synthetic bridges, a perfect detector over the pyramid plan, and scoring against the truth.

Used to test and time the merge without a model: :func:`synthetic_scene` scatters non-overlapping
oriented bridges over a scene; :class:`PerfectDetector` returns, for one :class:`PlanWindow`, exactly
the parts of those bridges a window of that level shows (so long bridges come back in fragments at
fine levels and whole at coarse ones, and small bridges vanish at coarse levels, as with a real
detector); :func:`score_against_truth` measures recall, fragmentation and wrong merges of merged
boxes; :func:`time_merge` times the merge on a realistic 100,000-detection load.

The independent check of the merge (issue 12) has its own detector and scenes: :class:`CheckDetector`
returns the visible part of every true bridge in every window of every level as a rectangle *along
the bridge*, each edge jittered by up to ``+-jitter_px`` pixels of that level, with constant, noisy,
coarse-higher or coarse-lower scores; :func:`check_scene` is the 12,000 x 8,000 px scene with 100
bridges of 50 to 6,000 px; :func:`near_miss_scene` lays out the pairs that a merge must keep apart
(parallel decks 5, 10 and 30 px apart, crossings, a short bridge beside a long one, bridges in a row
10, 20 and 40 px apart) at several angles.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import shapely
import torch

from hbdnet.boxes.convention import obb_to_poly, poly_to_obb, regularize_le90
from hbdnet.boxes.iou import box_iou_rotated
from hbdnet.pyramid import PlanWindow, plan_pyramid
from serving.merge.methods import MergeConfig, merge
from serving.merge.window_detections import SceneDetections, WindowDetections, to_scene


@dataclass(frozen=True)
class SyntheticScene:
    """Ground-truth bridges: ``boxes`` ``(N, 5)`` le90 in full-resolution pixels of the scene."""

    height: int
    width: int
    boxes: np.ndarray


def _polygons(boxes: np.ndarray) -> np.ndarray:
    corners = obb_to_poly(torch.from_numpy(np.asarray(boxes, dtype=np.float64))).numpy()
    return shapely.polygons(corners.reshape(-1, 4, 2))


def _hulls(boxes: np.ndarray) -> np.ndarray:
    """``(N, 4)`` axis-aligned hulls ``(x0, y0, x1, y1)``."""
    c, s = np.abs(np.cos(boxes[:, 4])), np.abs(np.sin(boxes[:, 4]))
    hx = (boxes[:, 2] * c + boxes[:, 3] * s) / 2
    hy = (boxes[:, 2] * s + boxes[:, 3] * c) / 2
    return np.stack([boxes[:, 0] - hx, boxes[:, 1] - hy, boxes[:, 0] + hx, boxes[:, 1] + hy], axis=1)


def texture(c: int, h: int, w: int, dtype=np.uint8, seed: int = 0, high: int = 256) -> np.ndarray:
    """A ``(c, h, w)`` test image: noise on a gradient, so that neighbouring pixels differ and every
    phase of a pyramid level matters."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = (xx * 0.37 + yy * 0.21)[None] + np.arange(c)[:, None, None] * 17
    return ((base + rng.integers(0, 97, (c, h, w))) % high).astype(dtype)


LevelCache = dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]  # scale -> boxes, polygons, hulls


def visible_truth(levels: LevelCache, truth: np.ndarray, window: PlanWindow) -> tuple[np.ndarray, np.ndarray]:
    """The true bridges that show in ``window``: their boxes in the window's level pixels ``(P, 5)``
    and their visible parts, polygons clipped to the window ``(P,)``. The bridges in level pixels are
    cached per scale in ``levels``."""
    if window.scale not in levels:
        boxes = np.asarray(truth, dtype=np.float64).reshape(-1, 5).copy()
        boxes[:, :4] /= window.scale
        levels[window.scale] = (boxes, _polygons(boxes), _hulls(boxes))
    level_truth, polys, hulls = levels[window.scale]
    x0, y0 = window.col_off, window.row_off
    x1, y1 = x0 + window.width, y0 + window.height
    cand = np.flatnonzero((hulls[:, 0] < x1) & (hulls[:, 2] > x0) & (hulls[:, 1] < y1) & (hulls[:, 3] > y0))
    visible = shapely.intersection(polys[cand], shapely.box(x0, y0, x1, y1))
    ok = (shapely.area(visible) > 0) & (shapely.get_type_id(visible) == 3)  # convex clip: a polygon or nothing
    return level_truth[cand[ok]], visible[ok]


def synthetic_scene(
    height: int = 6000,
    width: int = 9000,
    n_bridges: int = 150,
    length_range: tuple[float, float] = (50.0, 5000.0),
    width_range: tuple[float, float] = (8.0, 60.0),
    seed: int = 0,
    tries: int = 200,
) -> SyntheticScene:
    """Non-overlapping bridges fully inside the scene.

    Lengths are log-uniform in ``length_range``, widths log-uniform in ``width_range`` capped at a
    third of the length, angles uniform, positions uniform. Bridges are placed longest first and a
    bridge that finds no free place in ``tries`` draws is left out, so a crowded scene may hold fewer
    than ``n_bridges``.
    """
    rng = np.random.default_rng(seed)
    lengths = np.sort(np.exp(rng.uniform(*np.log(length_range), n_bridges)))[::-1]
    placed: list[np.ndarray] = []
    hulls = np.zeros((0, 4))
    polys = np.zeros(0, dtype=object)
    for length in lengths:
        w_hi = min(width_range[1], length / 3)
        deck = math.exp(rng.uniform(math.log(min(width_range[0], w_hi)), math.log(w_hi)))
        for _ in range(tries):
            theta = rng.uniform(-math.pi / 2, math.pi / 2)
            hx = (length * abs(math.cos(theta)) + deck * abs(math.sin(theta))) / 2
            hy = (length * abs(math.sin(theta)) + deck * abs(math.cos(theta))) / 2
            if 2 * hx >= width or 2 * hy >= height:
                continue
            box = np.array([[rng.uniform(hx, width - hx), rng.uniform(hy, height - hy), length, deck, theta]])
            hull = _hulls(box)
            near = (hulls[:, 0] < hull[0, 2]) & (hulls[:, 2] > hull[0, 0]) & (hulls[:, 1] < hull[0, 3]) & (
                hulls[:, 3] > hull[0, 1]
            )
            poly = _polygons(box)
            if near.any() and shapely.intersects(polys[near], poly[0]).any():
                continue
            placed.append(box[0])
            hulls = np.concatenate([hulls, hull])
            polys = np.concatenate([polys, poly])
            break
    boxes = regularize_le90(torch.from_numpy(np.array(placed).reshape(-1, 5))).numpy()
    return SyntheticScene(height, width, boxes)


@dataclass
class PerfectDetector:
    """Test double of a detector: the visible parts of known bridges in one window of one level.

    For a window at scale ``s`` the bridges are mapped to level pixels (divided by ``s``), clipped to
    the window, and each visible part is reported as its minimum-area rectangle in window pixels. A
    part is dropped when it is shorter than ``min_length`` or narrower than ``min_width`` level pixels
    (a detector does not see a 50 px bridge at 1/16, 3 px), or when it shows less than
    ``min_deck_fraction`` of the deck's width (a sliver along the deck's edge, cut off by a window
    border that runs nearly along the bridge, is not recognisable as a bridge). Scores are ``0.9``
    for a whole bridge, down to ``0.6`` for a sliver (``0.9 - 0.3 * (1 - visible area fraction)``),
    plus Gaussian noise of ``score_noise``.

    ``jitter`` (a fraction, e.g. 0.03) makes the boxes imperfect, in the box's own frame and level
    pixels: the centre moves by ``N(0, jitter * w)`` along the axis and ``N(0, jitter * h)`` across
    it, ``w`` and ``h`` are multiplied by ``1 + N(0, jitter)``, and the angle moves by
    ``N(0, jitter * h / w)`` radians, so that the ends of the box move sideways by about
    ``jitter * h / 2`` (a fixed angle error would make any long thin box miss its bridge, for any
    detector). Randomness is seeded per window, so results do not depend on the order of calls.
    """

    truth: np.ndarray
    min_length: float = 12.0
    min_width: float = 2.0
    jitter: float = 0.0
    score_noise: float = 0.02
    seed: int = 0
    min_deck_fraction: float = 0.5
    _levels: LevelCache = field(default_factory=dict, repr=False)

    def __call__(self, window: PlanWindow) -> WindowDetections:
        level_truth, visible = visible_truth(self._levels, self.truth, window)
        x0, y0 = window.col_off, window.row_off
        vis_area = shapely.area(visible)
        boxes, across = self._visible_rects(visible, level_truth)
        boxes = boxes - np.array([x0, y0, 0.0, 0.0, 0.0])
        keep = (
            (boxes[:, 2] >= self.min_length)
            & (boxes[:, 3] >= self.min_width)
            & (across >= self.min_deck_fraction * level_truth[:, 3])
        )
        frac = vis_area[keep] / (level_truth[keep, 2] * level_truth[keep, 3])
        boxes = boxes[keep]
        rng = np.random.default_rng([self.seed, window.level, window.row_off, window.col_off])
        scores = np.clip(0.9 - 0.3 * (1 - frac) + rng.normal(0, self.score_noise, len(frac)), 0.05, 0.999)
        if self.jitter > 0:
            boxes = jitter_boxes(boxes, self.jitter, rng)
        return WindowDetections(window, boxes, scores, np.zeros(len(boxes), dtype=np.int64))

    @staticmethod
    def _visible_rects(polys: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Minimum-area rectangles ``(P, 5)`` of clipped parts, and each part's extent across its deck.

        On a tie (a right-triangle part has the same minimum area along either leg and along the
        hypotenuse) the rectangle along the bridge's own direction is taken, as a detector would.
        """
        if len(polys) == 0:
            return np.zeros((0, 5)), np.zeros(0)
        coords, index = shapely.get_coordinates(polys, return_index=True)
        counts = np.bincount(index, minlength=len(polys))
        k = counts.max()
        # Pad each ring to k points by repeating its first point (a repeated point changes no hull).
        starts = np.cumsum(counts) - counts
        col = np.arange(k)[None, :]
        pts = coords[np.where(col < counts[:, None], col, 0) + starts[:, None]]  # (P, k, 2)
        rects = poly_to_obb(torch.from_numpy(pts.reshape(len(polys), 2 * k))).numpy()
        # The rectangle along the bridge: extents of the part on the bridge's axes.
        c, s = np.cos(truth[:, 4])[:, None], np.sin(truth[:, 4])[:, None]
        along = pts[..., 0] * c + pts[..., 1] * s
        across = -pts[..., 0] * s + pts[..., 1] * c
        a0, a1, c0, c1 = along.min(1), along.max(1), across.min(1), across.max(1)
        am, cm = (a0 + a1) / 2, (c0 + c1) / 2
        c, s = c[:, 0], s[:, 0]
        own = np.stack([am * c - cm * s, am * s + cm * c, a1 - a0, c1 - c0, truth[:, 4]], axis=1)
        own = regularize_le90(torch.from_numpy(own)).numpy()
        tie = own[:, 2] * own[:, 3] <= rects[:, 2] * rects[:, 3] * (1 + 1e-9)
        return np.where(tie[:, None], own, rects), c1 - c0


class PerfectWindowDetector:
    """``PerfectDetector`` (one window at a time, ignores pixels) as the engine's ``WindowDetector``."""

    name = "perfect"

    def __init__(self, ground_truth: np.ndarray):
        self._perfect = PerfectDetector(np.asarray(ground_truth, dtype=np.float64).reshape(-1, 5))

    def detect(self, images: list[np.ndarray], windows: list[PlanWindow]) -> list[tuple[np.ndarray, ...]]:
        results = [self._perfect(w) for w in windows]
        return [(d.boxes, d.scores, d.labels) for d in results]


@dataclass(frozen=True, eq=False)
class PerfectSpec:
    """The engine's ``DetectorSpec`` of a ``PerfectWindowDetector`` over ``ground_truth`` ((N, 5) le90
    boxes in scene pixels): a test double that returns the visible parts of those boxes in each window."""

    ground_truth: np.ndarray
    name: str = "perfect"
    uses_gpu: bool = False

    def build(self) -> PerfectWindowDetector:
        return PerfectWindowDetector(self.ground_truth)

    def fingerprint(self) -> str:
        truth = np.ascontiguousarray(np.asarray(self.ground_truth, dtype=np.float64))
        return hashlib.sha256(truth.tobytes()).hexdigest()


ScoreMode = Literal["constant", "noisy", "coarse_higher", "coarse_lower"]


@dataclass
class CheckDetector:
    """The independent check's detector: each true bridge's visible part in a window, as a rectangle
    along the bridge, jittered in the level's pixels.

    For a window of level ``k`` (scale ``s = 2**k``) every bridge is mapped to level pixels and
    clipped to the window; a visible part is reported as the rectangle along the bridge's own
    direction that holds it (extents along and across the bridge's axis), dropped when shorter than
    ``min_length`` or narrower than ``min_width`` level pixels or when it shows less than
    ``min_deck_fraction`` of the deck's width. Then each of the rectangle's four edges moves by
    ``U(-jitter_px, jitter_px)`` level pixels (``jitter_px`` = 2: +-2 px at level 0, +-32 scene px at
    level 4), and its direction turns so that its two ends move sideways by up to ``jitter_px`` against
    each other. Unlike :class:`PerfectDetector`, a part's rectangle never takes another direction than
    the bridge, and the error does not grow with the box's size.

    ``scores``: ``"constant"`` 0.9 everywhere; ``"noisy"`` ``N(0.7, 0.15)`` independent of everything;
    ``"coarse_higher"`` ``0.5 + 0.1 k`` and ``"coarse_lower"`` ``0.9 - 0.1 k`` (plus ``N(0, 0.01)``), so a
    coarse box outranks (or ranks below) the fine boxes of its own bridge. Randomness is seeded per
    window. Also a ``WindowDetector`` (``detect``) for the engine, which ignores the pixels.
    """

    truth: np.ndarray
    jitter_px: float = 2.0
    scores: ScoreMode = "constant"
    seed: int = 0
    min_length: float = 12.0
    min_width: float = 2.0
    min_deck_fraction: float = 0.5
    name: str = "check"
    _levels: LevelCache = field(default_factory=dict, repr=False)

    def __call__(self, window: PlanWindow) -> WindowDetections:
        t, visible = visible_truth(self._levels, self.truth, window)
        x0, y0 = window.col_off, window.row_off
        rng = np.random.default_rng([self.seed, window.level, window.row_off, window.col_off])
        if len(t):
            coords, index = shapely.get_coordinates(visible, return_index=True)
            c, s = np.cos(t[index, 4]), np.sin(t[index, 4])
            along = coords[:, 0] * c + coords[:, 1] * s
            across = -coords[:, 0] * s + coords[:, 1] * c
            a0, a1 = _group_extent(along, index, len(t))
            c0, c1 = _group_extent(across, index, len(t))
        else:
            a0 = a1 = c0 = c1 = np.zeros(0)
        keep = ((a1 - a0 >= self.min_length) & (c1 - c0 >= self.min_width)
                & (c1 - c0 >= self.min_deck_fraction * t[:, 3]))
        a0, a1, c0, c1, t = a0[keep], a1[keep], c0[keep], c1[keep], t[keep]
        n, j = len(t), self.jitter_px
        a0, a1 = a0 + rng.uniform(-j, j, n), a1 + rng.uniform(-j, j, n)
        c0, c1 = c0 + rng.uniform(-j, j, n), c1 + rng.uniform(-j, j, n)
        length, width = np.maximum(a1 - a0, 1.0), np.maximum(c1 - c0, 1.0)
        theta = t[:, 4] + np.arctan(rng.uniform(-j, j, n) / length)
        am, cm = (a0 + a1) / 2, (c0 + c1) / 2
        c, s = np.cos(t[:, 4]), np.sin(t[:, 4])
        boxes = np.stack([am * c - cm * s - x0, am * s + cm * c - y0, length, width, theta], axis=1)
        boxes = regularize_le90(torch.from_numpy(boxes.reshape(-1, 5))).numpy()
        if self.scores == "constant":
            scores = np.full(n, 0.9)
        elif self.scores == "noisy":
            scores = rng.normal(0.7, 0.15, n)
        elif self.scores == "coarse_higher":
            scores = 0.5 + 0.1 * window.level + rng.normal(0, 0.01, n)
        elif self.scores == "coarse_lower":
            scores = 0.9 - 0.1 * window.level + rng.normal(0, 0.01, n)
        else:
            raise ValueError(f"unknown score mode {self.scores!r}")
        return WindowDetections(window, boxes, np.clip(scores, 0.05, 0.999), np.zeros(n, dtype=np.int64))

    def detect(
        self, images: list[np.ndarray], windows: list[PlanWindow]
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The engine's ``WindowDetector`` interface (pixels ignored)."""
        results = [self(w) for w in windows]
        return [(d.boxes, d.scores, d.labels) for d in results]


def _group_extent(values: np.ndarray, index: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.full(n, np.inf), np.full(n, -np.inf)
    np.minimum.at(lo, index, values)
    np.maximum.at(hi, index, values)
    return lo, hi


def check_scene(height: int = 8000, width: int = 12000, n_bridges: int = 100,
                length_range: tuple[float, float] = (50.0, 6000.0), seed: int = 0) -> SyntheticScene:
    """The independent check's scene: 12,000 x 8,000 px, 100 bridges 50 to 6,000 px long (log-uniform),
    8 to 60 px wide, at random angles, none touching another (see :func:`synthetic_scene`)."""
    return synthetic_scene(height, width, n_bridges=n_bridges, length_range=length_range, seed=seed, tries=500)


NEAR_MISS_CASES = (
    "parallel_5", "parallel_10", "parallel_30", "collinear_10", "collinear_20", "collinear_40",
    "crossing_30", "crossing_90", "short_beside_long",
)


@dataclass(frozen=True)
class NearMissScene:
    """Pairs of bridges a merge must keep apart: ``scene.boxes`` holds pair ``p`` at rows ``2p, 2p + 1``;
    ``cases[p]`` names the pair (one of :data:`NEAR_MISS_CASES`), ``angles[p]`` its direction in degrees."""

    scene: SyntheticScene
    cases: tuple[str, ...]
    angles: tuple[float, ...]


def near_miss_pair(case: str, centre: tuple[float, float], theta: float, length: float = 1500.0,
                   deck: float = 16.0) -> np.ndarray:
    """The two bridges ``(2, 5)`` of one near-miss ``case`` around ``centre``, the first along ``theta``.

    ``parallel_G``: two decks ``length`` long side by side, ``G`` px between their edges (the second
    one ``deck + 4`` wide); ``collinear_G``: two bridges in a row (``0.55`` and ``0.4 length``), ``G`` px
    between their ends; ``crossing_A``: a second bridge ``0.6 length`` long crossing the first's middle at
    ``A`` degrees; ``short_beside_long``: a 100 px bridge beside the middle of the first, 10 px away.
    """
    u, n = np.array([math.cos(theta), math.sin(theta)]), np.array([-math.sin(theta), math.cos(theta)])
    c = np.asarray(centre, dtype=np.float64)
    kind, _, arg = case.rpartition("_")
    if case == "short_beside_long":
        kind, arg = "short", "10"
    gap = float(arg)
    if kind == "parallel":
        w2 = deck + 4
        off = (deck + w2) / 2 + gap
        a, b = c - n * off / 2, c + n * off / 2
        return np.array([[*a, length, deck, theta], [*b, length, w2, theta]])
    if kind == "collinear":
        l1, l2 = 0.55 * length, 0.4 * length
        a = c - u * (gap / 2 + l1 / 2)
        b = c + u * (gap / 2 + l2 / 2)
        return np.array([[*a, l1, deck, theta], [*b, l2, deck, theta]])
    if kind == "crossing":
        return np.array([[*c, length, deck, theta], [*c, 0.6 * length, deck + 4, theta + math.radians(gap)]])
    if kind == "short":
        b = c + u * 0.1 * length + n * ((deck + deck) / 2 + gap)
        return np.array([[*c, length, deck, theta], [*b, 100.0, deck, theta]])
    raise ValueError(f"unknown near-miss case {case!r}")


def near_miss_scene(cases: tuple[str, ...] = NEAR_MISS_CASES, angles: tuple[float, ...] = (0.0, 17.0, 45.0, 73.0),
                    length: tuple[float, float] = (700.0, 1900.0), cell: float = 2200.0,
                    deck: tuple[float, float] = (8.0, 40.0), seed: int = 0) -> NearMissScene:
    """Every ``case`` at every angle (degrees, plus a random offset under 1 degree so that no pair lies
    exactly along the pixel grid), one pair per ``cell x cell`` square of a scene laid out row by row;
    pair centres are moved by up to a tenth of a cell so that ends and window borders fall anywhere.
    Each pair draws its ``length`` and ``deck`` width log-uniformly from the given ranges."""
    rng = np.random.default_rng(seed)
    combos = [(c, a) for c in cases for a in angles]
    cols = math.ceil(math.sqrt(len(combos)))
    rows = math.ceil(len(combos) / cols)
    boxes = []
    for k, (case, angle) in enumerate(combos):
        centre = ((k % cols + 0.5) * cell + rng.uniform(-0.1, 0.1) * cell,
                  (k // cols + 0.5) * cell + rng.uniform(-0.1, 0.1) * cell)
        theta = math.radians(angle + rng.uniform(0.05, 0.95))
        pair_length = math.exp(rng.uniform(*np.log(length)))
        pair_deck = math.exp(rng.uniform(*np.log(deck)))
        boxes.append(near_miss_pair(case, centre, theta, pair_length, pair_deck))
    truth = regularize_le90(torch.from_numpy(np.concatenate(boxes))).numpy()
    scene = SyntheticScene(int(rows * cell), int(cols * cell), truth)
    return NearMissScene(scene, tuple(c for c, _ in combos), tuple(a for _, a in combos))


def jitter_boxes(boxes: np.ndarray, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """Perturb le90 boxes in their own frame (see :class:`PerfectDetector`)."""
    cx, cy, w, h, t = (boxes[:, k] for k in range(5))
    n = len(boxes)
    along, across = rng.normal(0, jitter, n) * w, rng.normal(0, jitter, n) * h
    out = np.stack(
        [
            cx + along * np.cos(t) - across * np.sin(t),
            cy + along * np.sin(t) + across * np.cos(t),
            w * np.clip(1 + rng.normal(0, jitter, n), 0.5, None),
            h * np.clip(1 + rng.normal(0, jitter, n), 0.5, None),
            t + rng.normal(0, jitter, n) * h / np.maximum(w, 1e-9),
        ],
        axis=1,
    )
    return regularize_le90(torch.from_numpy(out)).numpy()


def detect_scene(
    scene: SyntheticScene, detector: Callable[[PlanWindow], WindowDetections], **plan_kwargs: int
) -> SceneDetections:
    """Run ``detector`` (a :class:`PerfectDetector` or :class:`CheckDetector`) over every window of the
    scene's full pyramid plan; scene-pixel detections."""
    plan = plan_pyramid(scene.height, scene.width, **plan_kwargs)
    return to_scene([detector(w) for w in plan])


@dataclass(frozen=True)
class TruthScore:
    """How merged boxes cover the true bridges.

    ``recall``: fraction of true bridges matched one-to-one (VOC-style, boxes taken in score order,
    each to the unmatched bridge it overlaps most) at rotated IoU >= the threshold.
    ``fragmentation``: fraction of true bridges with more than one output box lying mostly inside
    them (IoF of the box in the bridge >= ``frag_iof``: a fragment of a bridge has a small IoU with it
    but lies inside it, so IoF counts fragments and duplicates alike), or found only as a fragment
    (such a box, and no match).
    ``merged``: output boxes that hold at least ``merge_cover`` of each of two or more bridges (a
    wrong merge of bridges). ``unmatched``: output boxes matched to no bridge (fragments,
    duplicates, false positives). ``matched`` ``(n_truth,)``: which bridges were matched.
    """

    recall: float
    fragmentation: float
    n_truth: int
    n_output: int
    unmatched: int
    merged: int = 0
    matched: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool), repr=False, compare=False)
    merged_truth: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool), repr=False, compare=False)

    def __str__(self) -> str:
        return (
            f"recall {self.recall:.4f}, fragmentation {self.fragmentation:.4f}, {self.merged} wrong merges, "
            f"{self.n_output} boxes for {self.n_truth} bridges, {self.unmatched} unmatched"
        )


def score_against_truth(
    boxes: np.ndarray, scores: np.ndarray, truth: np.ndarray, iou_thr: float = 0.5, frag_iof: float = 0.5,
    merge_cover: float = 0.5,
) -> TruthScore:
    """Recall, fragmentation and wrong merges of output ``boxes`` against ``truth`` (see :class:`TruthScore`).

    Meant for test-sized inputs: it holds dense ``(truth, output)`` matrices.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    truth = np.asarray(truth, dtype=np.float64).reshape(-1, 5)
    n_t, n_o = len(truth), len(boxes)
    iou = np.zeros((n_t, n_o))
    iof = np.zeros((n_t, n_o))  # of the output box inside the bridge
    cover = np.zeros((n_t, n_o))  # of the bridge inside the output box
    ht, ho = _hulls(truth), _hulls(boxes)
    ti, oi = np.nonzero(
        (ht[:, None, 0] < ho[None, :, 2]) & (ht[:, None, 2] > ho[None, :, 0])
        & (ht[:, None, 1] < ho[None, :, 3]) & (ht[:, None, 3] > ho[None, :, 1])
    )
    if len(ti):
        f = box_iou_rotated(
            torch.from_numpy(boxes[oi]), torch.from_numpy(truth[ti]), mode="iof", aligned=True
        ).numpy()
        inter = f * boxes[oi, 2] * boxes[oi, 3]
        iof[ti, oi] = f
        iou[ti, oi] = inter / (boxes[oi, 2] * boxes[oi, 3] + truth[ti, 2] * truth[ti, 3] - inter)
        cover[ti, oi] = inter / (truth[ti, 2] * truth[ti, 3])
    taken = np.zeros(n_t, dtype=bool)
    for o in np.argsort(-np.asarray(scores), kind="stable"):
        col = np.where(taken, -1.0, iou[:, o])
        t = int(np.argmax(col)) if n_t else -1
        if t >= 0 and col[t] >= iou_thr:
            taken[t] = True
    inside = (iof >= frag_iof).sum(axis=1)
    fragmented = (inside > 1) | ((inside >= 1) & ~taken)
    covering = cover >= merge_cover
    merging = covering.sum(axis=0) >= 2
    return TruthScore(
        recall=float(taken.mean()) if n_t else 1.0,
        fragmentation=float(fragmented.mean()) if n_t else 0.0,
        n_truth=n_t,
        n_output=n_o,
        unmatched=n_o - int(taken.sum()),
        merged=int(merging.sum()),
        matched=taken,
        merged_truth=covering[:, merging].any(axis=1) if n_o else np.zeros(n_t, dtype=bool),
    )


def pairs_kept(score: TruthScore) -> np.ndarray:
    """For a :class:`NearMissScene` (pair ``p`` at rows ``2p, 2p + 1``): whether each pair came out as
    two correct boxes (both bridges matched at the IoU threshold, neither in a box holding both)."""
    ok = score.matched & ~score.merged_truth
    return ok[0::2] & ok[1::2]


def benchmark_detections(
    n: int = 100_000, side: int = 16384, n_bridges: int = 1000, seed: int = 0
) -> SceneDetections:
    """``n`` window detections of a ``side x side`` scene, shaped like a real detector's output.

    The perfect detector's boxes (3 % jitter) over the full pyramid of a scene with ``n_bridges``
    bridges; about as many jittered duplicates of them with lower scores (what a per-window NMS
    leaves); the rest low-score false positives, the same number in every window of the plan (a
    detector reports a similar number of boxes per window, whatever its level), 12 to 200 level
    pixels long, 1 to 8 times longer than wide, at random angles.
    """
    rng = np.random.default_rng(seed)
    scene = synthetic_scene(side, side, n_bridges=n_bridges, seed=seed, tries=50)
    plan = plan_pyramid(side, side)
    dets = to_scene([PerfectDetector(scene.boxes, jitter=0.03, seed=seed)(w) for w in plan])
    dets = _subset(dets, rng.permutation(len(dets))[: n // 2])
    src = rng.integers(0, len(dets), min(len(dets), n - len(dets)))
    dup = _subset(dets, src)
    dup = SceneDetections(
        jitter_boxes(dup.boxes, 0.05, rng), dup.scores * rng.uniform(0.3, 0.95, len(src)), dup.labels,
        dup.levels, dup.window_bounds,
    )
    n_fp = n - len(dets) - len(dup)
    win = np.array([(w.col_off, w.row_off, w.width, w.height, w.scale, w.level) for w in plan], dtype=float)
    col, row, ww, wh, scale, level = win[rng.integers(0, len(plan), n_fp)].T
    length = np.exp(rng.uniform(np.log(12), np.log(200), n_fp))
    boxes = np.stack(
        [
            (col + rng.uniform(0, 1, n_fp) * ww) * scale,
            (row + rng.uniform(0, 1, n_fp) * wh) * scale,
            length * scale,
            length / rng.uniform(1, 8, n_fp) * scale,
            rng.uniform(-math.pi / 2, math.pi / 2, n_fp),
        ],
        axis=1,
    )
    bounds = np.stack([col * scale, row * scale, (col + ww) * scale, (row + wh) * scale], axis=1)
    fp = SceneDetections(
        boxes, rng.uniform(0.05, 0.4, n_fp), np.zeros(n_fp, dtype=np.int64), level.astype(np.int64), bounds
    )
    parts = [dets, dup, fp]
    return SceneDetections(
        boxes=np.concatenate([p.boxes for p in parts]),
        scores=np.concatenate([p.scores for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        levels=np.concatenate([p.levels for p in parts]),
        window_bounds=np.concatenate([p.window_bounds for p in parts]),
    )


def _subset(dets: SceneDetections, idx: np.ndarray) -> SceneDetections:
    bounds = None if dets.window_bounds is None else dets.window_bounds[idx]
    return SceneDetections(dets.boxes[idx], dets.scores[idx], dets.labels[idx], dets.levels[idx], bounds)


def time_merge(
    n: int = 100_000, repeats: int = 3, seed: int = 0, method: Literal["holistic", "authors"] = "holistic"
) -> dict[str, float]:
    """Best-of-``repeats`` wall time of :func:`serving.merge.methods.merge` on :func:`benchmark_detections`.

    Returns ``n_detections``, ``n_merged`` (output boxes), ``seconds`` (wall) and ``cpu_seconds`` (the
    process's CPU time, best of the repeats: steadier than wall time on a shared host).
    """
    dets = benchmark_detections(n, seed=seed)
    config = MergeConfig(method=method)
    best, best_cpu, out = math.inf, math.inf, None
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        out = merge(dets, config)
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return {"n_detections": float(len(dets)), "n_merged": float(len(out)), "seconds": best, "cpu_seconds": best_cpu}
