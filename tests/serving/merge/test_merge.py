"""Window-to-scene mapping, the authors' merge and the rules of the holistic merge, case by case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import serving.merge.methods as merge_module
import serving.merge.pairs as merge_pairs
import serving.merge.suppress as merge_suppress
from hbdnet.boxes.iou import box_iou_rotated
from hbdnet.pyramid import PlanWindow, plan_pyramid
from serving.merge.methods import MergeConfig, merge, merge_authors
from serving.merge.pairs import chunk_slices, connected_components, points_in_boxes
from serving.merge.relations import attach_stub_groups
from serving.merge.suppress import greedy_nms
from serving.merge.window_detections import SceneDetections, WindowDetections, to_scene
from serving.testing.simulate import PerfectDetector, SyntheticScene, benchmark_detections, detect_scene, time_merge


def scene_dets(boxes, scores=None, levels=None, labels=None, bounds=None) -> SceneDetections:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    n = len(boxes)
    return SceneDetections(
        boxes,
        np.asarray(scores if scores is not None else np.full(n, 0.9), dtype=np.float64),
        np.asarray(labels if labels is not None else np.zeros(n), dtype=np.int64),
        np.asarray(levels if levels is not None else np.zeros(n), dtype=np.int64),
        None if bounds is None else np.asarray(bounds, dtype=np.float64),
    )


def iou(a, b) -> np.ndarray:
    """Rotated IoU matrix of two box arrays."""
    return box_iou_rotated(
        torch.as_tensor(np.asarray(a, dtype=np.float64).reshape(-1, 5)),
        torch.as_tensor(np.asarray(b, dtype=np.float64).reshape(-1, 5)),
    ).numpy()


def matched(out_boxes, truth, thr=0.5) -> bool:
    """One output per true box, each true box matched at IoU >= thr."""
    m = iou(out_boxes, truth)
    return len(out_boxes) == len(truth) and bool((m.max(0) >= thr).all()) and bool((m.max(1) >= thr).all())


# --- window detections to scene pixels -------------------------------------------------------------


def test_to_scene_offsets_and_scales_window_boxes():
    w2 = PlanWindow(level=2, scale=4, col_off=100, row_off=50, width=1024, height=1024)
    w0 = PlanWindow(level=0, scale=1, col_off=824, row_off=0, width=1024, height=1024)
    dets = to_scene([
        WindowDetections(w2, np.array([[10.0, 20.0, 30.0, 6.0, 0.3]]), np.array([0.8]), np.array([1])),
        WindowDetections(w0, np.zeros((0, 5)), np.zeros(0), np.zeros(0, dtype=np.int64)),
        WindowDetections(w0, np.array([[1.0, 2.0, 3.0, 1.0, -0.5], [5.0, 5.0, 4.0, 2.0, 0.0]]),
                         np.array([0.5, 0.6]), np.array([0, 0])),
    ])
    np.testing.assert_allclose(
        dets.boxes, [[440, 280, 120, 24, 0.3], [825, 2, 3, 1, -0.5], [829, 5, 4, 2, 0]]
    )
    np.testing.assert_array_equal(dets.levels, [2, 0, 0])
    np.testing.assert_array_equal(dets.labels, [1, 0, 0])
    np.testing.assert_allclose(dets.scores, [0.8, 0.5, 0.6])
    np.testing.assert_allclose(dets.window_bounds, [w2.scene_bounds(), w0.scene_bounds(), w0.scene_bounds()])


def test_to_scene_of_nothing_is_empty():
    assert len(to_scene([])) == 0
    assert len(merge([], MergeConfig())) == 0
    assert len(merge([], MergeConfig(method="authors"))) == 0


def test_window_detections_checks_shapes():
    w = PlanWindow(0, 1, 0, 0, 1024, 1024)
    with pytest.raises(ValueError):
        WindowDetections(w, np.zeros((2, 4)), np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError):
        WindowDetections(w, np.zeros((2, 5)), np.zeros(3), np.zeros(2))


# --- the authors' merge ----------------------------------------------------------------------------


def test_authors_merge_is_level_nms_04_then_global_nms_05():
    # B is shifted by 38 px along a 100 x 20 box: IoU(A, B) = 62 / 138 = 0.449, between 0.4 and 0.5.
    a, b = [0, 0, 100, 20, 0], [38, 0, 100, 20, 0]
    dets = scene_dets([a, b, b], scores=[0.9, 0.8, 0.7], levels=[0, 0, 1])
    keep = merge_authors(dets.boxes, dets.scores, dets.levels, dets.labels)
    # At level 0, A suppresses B (0.449 > 0.4); across levels the level-1 copy of B survives (< 0.5).
    assert keep.tolist() == [0, 2]
    out = merge(dets, MergeConfig(method="authors"))
    np.testing.assert_allclose(out.boxes, dets.boxes[[0, 2]])


# --- holistic merge: fusion -------------------------------------------------------------------------


def fragments(bridge, cuts, overlap=200.0):
    """Pieces of a bridge box between consecutive cut positions along its axis, overlapping."""
    cx, cy, w, h, t = bridge
    u = np.array([math.cos(t), math.sin(t)])
    out = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        a, b = max(a - overlap / 2, -w / 2), min(b + overlap / 2, w / 2)
        c = np.array([cx, cy]) + u * (a + b) / 2
        out.append([c[0], c[1], b - a, h, t])
    return np.array(out)


def test_collinear_fragments_fuse_into_the_whole_bridge():
    bridge = [5000.0, 3000.0, 3000.0, 24.0, 0.4]
    parts = fragments(bridge, [-1500, -700, 100, 900, 1500])
    out = merge(scene_dets(parts, scores=[0.7, 0.8, 0.75, 0.72]))
    assert len(out) == 1
    np.testing.assert_allclose(out.boxes[0], bridge, atol=1e-6)
    assert out.scores[0] == pytest.approx(0.8)  # the best member's score
    assert out.members[0] == 4
    # The authors' merge keeps every fragment: no pair overlaps by IoU 0.4.
    assert len(merge(scene_dets(parts), MergeConfig(method="authors"))) == 4


def test_coarse_box_absorbs_fine_fragments_and_fine_ends_win():
    bridge = np.array([4000.0, 2000.0, 2400.0, 30.0, -0.3])
    fine = fragments(bridge, [-1200, -400, 400, 1200])
    coarse = bridge.copy()
    coarse[2] *= 1.04  # a coarse level sees the whole bridge, with ends 2 % too far out
    coarse[3] = 36.0  # and a width off by 1.5 level pixels at 1/4
    dets = scene_dets(np.vstack([fine, coarse]), scores=[0.7, 0.7, 0.7, 0.9], levels=[0, 0, 0, 2])
    out = merge(dets)
    assert len(out) == 1
    # Every end and the width come from the finest level that reaches them.
    np.testing.assert_allclose(out.boxes[0], bridge, atol=1e-6)
    assert out.levels[0] == 2  # the coarsest contributing level
    assert out.scores[0] == pytest.approx(0.9)


def test_coarse_box_completes_a_bridge_the_fine_level_saw_only_in_part():
    bridge = np.array([4000.0, 2000.0, 2400.0, 30.0, 0.7])
    fine = fragments(bridge, [-1200, -400, 300], overlap=100)  # fine boxes stop 800 px short
    dets = scene_dets(np.vstack([fine, bridge]), scores=[0.7, 0.7, 0.9], levels=[0, 0, 3])
    out = merge(dets)
    assert len(out) == 1
    np.testing.assert_allclose(out.boxes[0], bridge, atol=1e-6)


def test_window_border_cut_is_not_a_bridge_end():
    # Two level-0 windows [0, 1024) and [824, 1848); a horizontal bridge from x = 300 to 1500. The
    # left window's box ends at its border (a cut); a coarse box ends 60 px too early.
    left = PlanWindow(0, 1, 0, 0, 1024, 1024)
    right = PlanWindow(0, 1, 824, 0, 1024, 1024)
    coarse = PlanWindow(2, 4, 0, 0, 1024, 1024)
    dets = to_scene([
        WindowDetections(left, np.array([[662.0, 500.0, 724.0, 20.0, 0.0]]), np.array([0.8]), np.array([0])),
        WindowDetections(right, np.array([[338.0, 500.0, 676.0, 20.0, 0.0]]), np.array([0.8]), np.array([0])),
        WindowDetections(coarse, np.array([[(300 + 1440) / 8, 125.0, 1140 / 4, 5.0, 0.0]]), np.array([0.9]),
                         np.array([0])),
    ])
    out = merge(dets)
    assert len(out) == 1
    np.testing.assert_allclose(out.boxes[0], [900.0, 500.0, 1200.0, 20.0, 0.0], atol=1e-6)


def test_stub_across_the_deck_at_a_bridge_end_joins_the_bridge():
    # A bridge from x = 200 to 839, 40 px wide. The left window's box stops 24 px short (an imprecise
    # detector); the right window (from x = 824) sees the last 15 px, whose rectangle (40 x 15) lies
    # across the deck and touches that window's border.
    left = PlanWindow(0, 1, 0, 0, 1024, 1024)
    right = PlanWindow(0, 1, 824, 0, 1024, 1024)
    dets = to_scene([
        WindowDetections(left, np.array([[507.5, 400.0, 615.0, 40.0, 0.0]]), np.array([0.8]), np.array([0])),
        WindowDetections(right, np.array([[7.5, 400.0, 40.0, 15.0, -math.pi / 2]]), np.array([0.6]),
                         np.array([0])),
    ])
    out = merge(dets)
    assert len(out) == 1 and out.members[0] == 2
    cx, cy, w, h, t = out.boxes[0]
    assert (cx - w / 2, cy, h, t) == pytest.approx((200.0, 400.0, 40.0, 0.0))
    assert 815.0 <= cx + w / 2 <= 839.0


def test_parallel_twin_decks_stay_apart():
    # Two 2000 x 20 decks, 8 px apart (centre lines 28 px apart), crossing many window borders.
    t = 0.35
    n = np.array([-math.sin(t), math.cos(t)])
    truth = np.array([[3000 + 14 * n[0], 2000 + 14 * n[1], 2000, 20, t],
                      [3000 - 14 * n[0], 2000 - 14 * n[1], 2000, 20, t]])
    scene = SyntheticScene(4000, 6000, truth)
    for jitter in (0.0, 0.03):
        out = merge(detect_scene(scene, PerfectDetector(truth, jitter=jitter, seed=3)))
        assert matched(out.boxes, truth), (jitter, out.boxes)


def test_crossing_bridges_stay_apart():
    truth = np.array([[3000, 2000, 3000, 30, 0.05], [3000, 2000, 2000, 25, 0.05 + math.radians(60)]])
    scene = SyntheticScene(4000, 6000, truth)
    for jitter in (0.0, 0.03):
        out = merge(detect_scene(scene, PerfectDetector(truth, jitter=jitter, seed=5)))
        assert matched(out.boxes, truth), (jitter, out.boxes)


def test_bridges_in_a_row_stay_apart():
    # Two bridges on one road, ends 6 px apart with a 5 degree kink: the same direction within the
    # tolerance, but each box has a real end where they meet (placed well away from window borders
    # at every level: an end near a border may be a cut, and then the two are fused).
    t1, t2 = 0.2, 0.2 + math.radians(5)
    u1, u2 = np.array([math.cos(t1), math.sin(t1)]), np.array([math.cos(t2), math.sin(t2)])
    joint = np.array([3000.0, 1300.0])
    c1, c2 = joint - u1 * (600 + 3), joint + u2 * (450 + 3)
    truth = np.array([[*c1, 1200, 30, t1], [*c2, 900, 30, t2]])
    scene = SyntheticScene(4000, 6000, truth)
    out = merge(detect_scene(scene, PerfectDetector(truth, seed=1)))
    assert matched(out.boxes, truth), out.boxes


# --- holistic merge: suppression --------------------------------------------------------------------


def test_duplicates_are_suppressed_like_nms():
    a = [1000, 1000, 300, 40, 0.2]
    # Same box, shifted: fused into one with the best score.
    out = merge(scene_dets([a, [1003, 1001, 296, 41, 0.21]], scores=[0.6, 0.8]))
    assert len(out) == 1 and out.scores[0] == pytest.approx(0.8)
    # Near-square boxes 30 degrees apart, IoU > 0.5: the lower-scored one goes, the other is unchanged.
    sq1, sq2 = [500, 500, 60, 50, 0.0], [502, 499, 60, 52, math.radians(30)]
    assert iou(sq1, sq2)[0, 0] > 0.5
    out = merge(scene_dets([sq1, sq2], scores=[0.7, 0.9]))
    assert len(out) == 1
    np.testing.assert_allclose(out.boxes[0], sq2)
    # Side by side, 0.6 widths apart: not a duplicate (IoU 1/4), not one bridge (24 px across, beyond
    # the 5 px two full-resolution boxes may disagree by).
    out = merge(scene_dets([a, [1000 - 24 * math.sin(0.2), 1000 + 24 * math.cos(0.2), 300, 40, 0.2]]))
    assert len(out) == 2


def test_suppression_respects_labels_unless_class_agnostic():
    a = [1000, 1000, 300, 40, 0.2]
    dets = scene_dets([a, a], scores=[0.9, 0.8], labels=[0, 1])
    assert len(merge(dets)) == 2
    assert len(merge(dets, MergeConfig(class_agnostic=True))) == 1


def test_misaligned_piece_inside_a_bridge_is_suppressed_small_things_are_not():
    bridge = [2000, 2000, 800, 40, 0.0]
    piece = [2300, 2000, 40, 30, 0.6]  # a cut-off piece whose rectangle took another direction
    car = [1900, 2005, 12, 6, 1.0]  # shorter than half the deck's width: not a piece of the bridge
    out = merge(scene_dets([bridge, piece, car], scores=[0.9, 0.6, 0.5]))
    np.testing.assert_allclose(out.boxes, [bridge, car])


# --- the building blocks -----------------------------------------------------------------------------


@pytest.mark.parametrize("chunks", [None, (7, 13)], ids=["whole", "tiny-chunks"])
def test_points_in_boxes_matches_brute_force(chunks, monkeypatch):
    if chunks is not None:  # blocks of boxes and candidate chunks far smaller than one box's work
        monkeypatch.setattr(merge_pairs, "MAX_ENTRIES", chunks[0])
        monkeypatch.setattr(merge_pairs, "MAX_CANDIDATES", chunks[1])
    rng = np.random.default_rng(0)
    n, p = 300, 2000
    boxes = np.stack([rng.uniform(0, 4000, n), rng.uniform(0, 4000, n), np.exp(rng.uniform(2, 7, n)),
                      np.exp(rng.uniform(1, 4, n)), rng.uniform(-math.pi / 2, math.pi / 2, n)], 1)
    margin = (rng.uniform(0, 30, n), rng.uniform(0, 30, n))
    points = rng.uniform(-100, 4100, (p, 2))
    pclass = rng.integers(0, 12, p)
    lo = rng.integers(0, 12, (n, 2))
    first = np.stack([lo[:, 0], lo[:, 0] + rng.integers(-1, 4, n)], axis=1)  # some empty ranges
    start = np.maximum(first[:, 0], first[:, 1]) + 1 + lo[:, 1] % 3  # the second one after the first
    ranges = np.stack([first, np.stack([start, start + rng.integers(-1, 4, n)], axis=1)], axis=1)
    for cell in (None, 16.0, 700.0):
        b, q = points_in_boxes(boxes, margin, ranges, points, pclass, cell=cell)
        got = set(zip(b.tolist(), q.tolist()))
        dx = points[None, :, 0] - boxes[:, None, 0]
        dy = points[None, :, 1] - boxes[:, None, 1]
        c, s = np.cos(boxes[:, 4])[:, None], np.sin(boxes[:, 4])[:, None]
        inside = (np.abs(dx * c + dy * s) <= boxes[:, 2:3] / 2 + margin[0][:, None]) & (
            np.abs(-dx * s + dy * c) <= boxes[:, 3:4] / 2 + margin[1][:, None])
        in_class = np.zeros_like(inside)
        for r in range(2):
            in_class |= (pclass[None] >= ranges[:, r, 0:1]) & (pclass[None] <= ranges[:, r, 1:2])
        want = set(zip(*[x.tolist() for x in np.nonzero(inside & in_class)]))
        assert got == want and len(b) == len(got)


def test_chunk_slices_cover_in_order_within_the_budget():
    sizes = np.array([3, 0, 5, 9, 1, 1, 2, 0, 4])
    parts = chunk_slices(sizes, 6)
    assert [(p.start, p.stop) for p in parts] == [(0, 2), (2, 3), (3, 4), (4, 8), (8, 9)]
    for p in parts:  # within the budget, or a single item larger than it
        assert sizes[p].sum() <= 6 or p.stop - p.start == 1
    assert chunk_slices(np.zeros(0, dtype=np.int64), 6) == []
    assert [(p.start, p.stop) for p in chunk_slices(10, 4)] == [(0, 4), (4, 8), (8, 10)]


def test_merge_in_small_chunks_gives_the_same_boxes(monkeypatch):
    """Dense detections are merged in bounded chunks; the chunking must not change the result."""
    dets = benchmark_detections(20_000, side=4096, n_bridges=60, seed=3)
    whole = merge(dets)
    monkeypatch.setattr(merge_pairs, "MAX_ENTRIES", 1000)
    monkeypatch.setattr(merge_pairs, "MAX_CANDIDATES", 3000)
    monkeypatch.setattr(merge_module, "PAIR_CHUNK", 777)
    monkeypatch.setattr(merge_suppress, "PAIR_CHUNK", 555)
    chunked = merge(dets)
    assert len(whole) > 100
    for name in ("boxes", "scores", "labels", "levels", "members"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name))


def test_connected_components_of_chains_and_stars():
    n = 12
    i = np.array([0, 1, 2, 5, 9, 9, 11])
    j = np.array([1, 2, 3, 4, 10, 8, 8])
    comp = connected_components(n, i, j)
    groups = {}
    for node, c in enumerate(comp.tolist()):
        groups.setdefault(c, set()).add(node)
    assert sorted(map(sorted, groups.values())) == [[0, 1, 2, 3], [4, 5], [6], [7], [8, 9, 10, 11]]
    none = np.zeros(0, dtype=np.int64)
    assert connected_components(3, none, none).tolist() == [0, 1, 2]


def test_greedy_nms_decisions_match_the_sequential_loop():
    rng = np.random.default_rng(1)
    n = 400
    chain = np.arange(n - 1)
    random_top = rng.integers(0, n - 1, 600)
    top = np.concatenate([chain, random_top])
    low = np.concatenate([chain + 1, random_top + 1 + rng.integers(0, 30, 600)])
    ok = low < n
    top, low = top[ok], low[ok]
    suppressed = np.zeros(n, dtype=bool)
    for r in range(n):  # the definition: rank order, each kept box suppresses its lower neighbours
        if not suppressed[r]:
            suppressed[low[top == r]] = True
    want = np.flatnonzero(~suppressed)
    for rounds in (1, 3, 16, 1000):  # the vectorised rounds, finished by the loop when they run out
        np.testing.assert_array_equal(greedy_nms(top, low, n, max_rounds=rounds), want)


def test_stub_groups_join_one_group_and_never_link_two():
    # Groups by smallest member: 0 = {0, 1} (a bridge), 2 = {2} (another), 3 = {3, 4} (two stubs),
    # 5 = {5, 6} (a stub and a box that is not one).
    group = np.array([0, 0, 2, 3, 3, 5, 5])
    boxes = np.zeros((7, 5))
    boxes[:, 2] = [900, 800, 1200, 30, 30, 30, 300]
    host = np.array([0, 1, 2, 0, 1])
    stub = np.array([3, 4, 3, 5, 5])
    out = attach_stub_groups(group, boxes, host, stub)
    # {3, 4}: all stubs of group 0 (3 is also a stub of group 2, which holds no stub of 4): joins 0.
    # {5, 6}: 6 is no stub: stays. Group 2 receives nothing.
    assert out.tolist() == [0, 0, 2, 0, 0, 5, 5]
    # When {3, 4} is all stubs of group 2 as well, it joins the group with the longer host (2).
    out = attach_stub_groups(group, boxes, np.r_[host, 2], np.r_[stub, 4])
    assert out.tolist() == [0, 0, 2, 2, 2, 5, 5]


def test_perfect_detector_parts_cover_the_bridge_at_every_level():
    truth = np.array([[2500.0, 1500.0, 3000.0, 40.0, 0.3]])
    det = PerfectDetector(truth)
    plan = plan_pyramid(3000, 5000)
    dets = to_scene([det(w) for w in plan])
    whole = dets.levels == np.array([w.level for w in plan]).max()
    # The top level holds the whole bridge in one window: its box is the bridge.
    np.testing.assert_allclose(dets.boxes[whole], truth, atol=1e-6)
    # Full resolution: fragments, every one inside the bridge.
    frag = dets.boxes[dets.levels == 0]
    assert len(frag) >= 4
    iof = box_iou_rotated(torch.from_numpy(frag), torch.from_numpy(truth), mode="iof").numpy()
    assert (iof > 0.99).all()


@pytest.mark.slow
def test_merge_of_100k_detections_takes_at_most_two_seconds():
    result = time_merge(100_000, repeats=3)
    print(f"\nmerge of {result['n_detections']:.0f} detections -> {result['n_merged']:.0f} boxes: "
          f"{result['seconds']:.2f} s")
    assert result["n_detections"] == 100_000
    assert result["seconds"] <= 2.0, result
