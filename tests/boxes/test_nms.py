import math

import numpy as np
import pytest
import shapely
import torch

from hbdnet.boxes import le90_to_oc, obb_to_poly, regularize_le90
from hbdnet.boxes import nms as nms_module
from hbdnet.boxes.nms import batched_nms_horizontal, batched_nms_rotated, nms_horizontal, nms_rotated


def reference_nms_rotated(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> np.ndarray:
    """Greedy NMS with shapely IoUs: visit by decreasing score (ties: lower index first), keep a box
    unless a kept box overlaps it with IoU > thr."""
    polys = shapely.polygons(obb_to_poly(boxes.double()).reshape(-1, 4, 2).numpy())
    area = (boxes[:, 2] * boxes[:, 3]).abs().double().numpy()
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    tree = shapely.STRtree(polys)
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        cand = tree.query(polys[i])
        cand = cand[~suppressed[cand] & (cand != i) & (area[cand] > 0)]
        if area[i] == 0 or cand.size == 0:
            continue
        inter = shapely.area(shapely.intersection(polys[i], polys[cand]))
        suppressed[cand[inter / (area[i] + area[cand] - inter) > thr]] = True
    return np.asarray(keep, dtype=np.int64)


def reference_nms_horizontal(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> np.ndarray:
    b = boxes.double().numpy()
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        iw = np.clip(np.minimum(b[i, 2], b[:, 2]) - np.maximum(b[i, 0], b[:, 0]), 0, None)
        ih = np.clip(np.minimum(b[i, 3], b[:, 3]) - np.maximum(b[i, 1], b[:, 1]), 0, None)
        union = area[i] + area - iw * ih
        iou = np.divide(iw * ih, union, out=np.zeros_like(union), where=union > 0)
        suppressed |= iou > thr
    return np.asarray(keep, dtype=np.int64)


def per_category(reference, boxes, scores, idxs, thr) -> np.ndarray:
    keep = []
    for c in torch.unique(idxs):
        members = torch.nonzero(idxs == c).squeeze(1)
        keep.extend(members[reference(boxes[members], scores[members], thr)].tolist())
    return np.asarray(sorted(keep, key=lambda i: (-float(scores[i]), i)), dtype=np.int64)


def detections(n_objects: int, extent: float, seed: int, ties: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Jittered repeats of bridge-like objects (so clusters of overlapping boxes), plus strays."""
    g = torch.Generator().manual_seed(seed)
    length = 10 * torch.exp(torch.rand(n_objects, generator=g) * math.log(40))
    width = length / (1.5 + 4 * torch.rand(n_objects, generator=g))
    obj = torch.stack(
        [
            torch.rand(n_objects, generator=g) * extent,
            torch.rand(n_objects, generator=g) * extent,
            length,
            width,
            (torch.rand(n_objects, generator=g) - 0.5) * 2 * math.pi,
        ],
        1,
    )
    det = obj.repeat_interleave(torch.randint(1, 8, (n_objects,), generator=g), 0)
    j = torch.randn(det.shape[0], 5, generator=g)
    length, width = det[:, 2:3], det[:, 3:4]
    det = det + j * torch.cat([length, length, length, width, torch.ones_like(width)], 1) * 0.1
    det[:, 2:4] = det[:, 2:4].abs() + 1
    m = n_objects // 4
    stray = torch.cat(
        [torch.rand(m, 2, generator=g) * extent, 5 + torch.rand(m, 2, generator=g) * 100, torch.rand(m, 1, generator=g) * 7], 1
    )
    boxes = torch.cat([det, stray])
    scores = torch.rand(boxes.shape[0], generator=g)
    if ties:
        scores = (scores * 6).round() / 6
    return boxes, scores


def dense_cluster(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All boxes piled on one spot with small jitter: every pair overlaps, chains of suppression."""
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor([500.0, 500.0, 120.0, 40.0, 0.4])
    jitter = torch.randn(n, 5, generator=g) * torch.tensor([15.0, 15.0, 20.0, 8.0, 0.15])
    boxes = base + jitter
    boxes[:, 2:4] = boxes[:, 2:4].abs() + 2
    return boxes, torch.rand(n, generator=g)


CASES = [
    ("sparse scene", lambda: detections(150, 3000, seed=0)),
    ("crowded scene", lambda: detections(150, 400, seed=1)),
    ("ties", lambda: detections(120, 500, seed=2, ties=True)),
    ("dense cluster", lambda: dense_cluster(150, seed=3)),
    ("dense cluster, ties", lambda: (dense_cluster(150, seed=4)[0], torch.zeros(150))),
]


@pytest.mark.parametrize("thr", [0.1, 0.4, 0.7])
@pytest.mark.parametrize("name, make", CASES, ids=[c[0] for c in CASES])
def test_nms_rotated_matches_shapely_reference(name, make, thr):
    boxes, scores = make()
    keep = nms_rotated(boxes, scores, thr)
    assert keep.dtype == torch.int64
    ref = reference_nms_rotated(boxes, scores, thr)
    assert 0 < len(ref) < len(boxes)  # something is suppressed, something kept
    np.testing.assert_array_equal(keep.numpy(), ref)


def test_nms_rotated_small_blocks_and_budgets(monkeypatch):
    """Many blocks, chunked pair lists and the sequential fallback of the greedy pass agree too."""
    boxes, scores = detections(100, 300, seed=5)
    dense, dense_scores = dense_cluster(80, seed=6)
    boxes, scores = torch.cat([boxes, dense]), torch.cat([scores, dense_scores])
    expected = reference_nms_rotated(boxes, scores, 0.3)
    monkeypatch.setattr(nms_module, "_BLOCK_RANKS", 7)
    monkeypatch.setattr(nms_module, "_PAIR_BUDGET", 50)
    monkeypatch.setattr(nms_module, "_MAX_ROUNDS", 1)
    np.testing.assert_array_equal(nms_rotated(boxes, scores, 0.3).numpy(), expected)


def test_nms_rotated_thresholds_at_the_ends():
    boxes, scores = detections(60, 300, seed=7)
    twin = torch.cat([boxes, boxes[:5]])  # exact duplicates: IoU 1
    twin_scores = torch.cat([scores, scores[:5] - 0.5])
    # IoU is never > 1: nothing is suppressed, not even exact duplicates.
    assert len(nms_rotated(twin, twin_scores, 1.0)) == len(twin)
    keep = nms_rotated(twin, twin_scores, 0.999).numpy()
    assert not set(range(len(boxes), len(twin))) & set(keep.tolist())
    # Threshold 0: any real overlap suppresses.
    expected = reference_nms_rotated(boxes, scores, 0.0)
    np.testing.assert_array_equal(nms_rotated(boxes, scores, 0.0).numpy(), expected)


def test_suppression_needs_iou_strictly_above_threshold():
    # IoU exactly 0.5: the smaller box covers half of the larger one (exact in binary floating point).
    hbb = torch.tensor([[0.0, 0.0, 4.0, 1.0], [0.0, 0.0, 2.0, 1.0]])
    obb = torch.tensor([[2.0, 0.5, 4.0, 1.0, 0.0], [1.0, 0.5, 2.0, 1.0, 0.0]])
    scores = torch.tensor([0.9, 0.8])
    assert nms_horizontal(hbb, scores, 0.5).tolist() == [0, 1]
    assert nms_horizontal(hbb, scores, 0.49).tolist() == [0]
    assert nms_rotated(obb, scores, 0.5).tolist() == [0, 1]
    assert nms_rotated(obb, scores, 0.49).tolist() == [0]


def test_grid_yields_each_overlapping_pair_once():
    """The candidate pairs are exactly the pairs of boxes that share a grid cell, each once, and
    include every pair whose hulls overlap."""
    g = torch.Generator().manual_seed(15)
    n = 400
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 1000
    side = torch.exp(torch.rand(n, 2, generator=g, dtype=torch.float64) * math.log(100)) * 3
    hulls = torch.cat([xy, xy + side], 1)
    grid = nms_module._Grid(hulls, block_ranks=37, block_pairs=1 << 20)
    pairs = []
    for r0, r1 in grid.blocks:
        ent = grid.entries_of(r0, r1)
        pairs.append(torch.stack(grid.block_partners(ent), 1))
        pairs.extend(torch.stack(p, 1) for p in grid.later_partners(ent, budget=500))
    pairs = torch.cat(pairs).long()
    assert (pairs[:, 0] < pairs[:, 1]).all()
    keys = pairs[:, 0] * n + pairs[:, 1]
    assert torch.unique(keys).numel() == keys.numel(), "a pair was produced twice"
    lo = torch.floor((hulls[:, :2] - grid.origin) / grid.cell)
    hi = torch.floor((hulls[:, 2:] - grid.origin) / grid.cell)
    share = ((torch.maximum(lo[:, None], lo[None]) <= torch.minimum(hi[:, None], hi[None])).all(-1)).triu(1)
    assert set(keys.tolist()) == set((share.nonzero()[:, 0] * n + share.nonzero()[:, 1]).tolist())
    low, high = torch.maximum(hulls[:, None, :2], hulls[None, :, :2]), torch.minimum(hulls[:, None, 2:], hulls[None, :, 2:])
    overlap = (low < high).all(-1).triu(1)
    assert not (overlap & ~share).any()
    assert overlap.sum() > 100


def test_nms_rotated_any_representation():
    boxes, scores = detections(100, 600, seed=8)
    keep = nms_rotated(boxes, scores, 0.4)
    assert torch.equal(keep, nms_rotated(regularize_le90(boxes), scores, 0.4))
    assert torch.equal(keep, nms_rotated(le90_to_oc(regularize_le90(boxes)), scores, 0.4))
    assert torch.equal(keep, nms_rotated(boxes.double(), scores, 0.4))


def test_nms_rotated_zero_area_boxes_never_suppress():
    boxes = torch.tensor(
        [[10.0, 10.0, 20.0, 0.0, 0.3], [10.0, 10.0, 20.0, 0.0, 0.3], [10.0, 10.0, 0.0, 0.0, 0.0], [10.0, 10.0, 20.0, 10.0, 0.3]]
    )
    keep = nms_rotated(boxes, torch.tensor([0.9, 0.8, 0.7, 0.6]), 0.0)
    assert keep.tolist() == [0, 1, 2, 3]


def test_batched_nms_rotated_is_per_category():
    boxes, scores = detections(120, 500, seed=9)
    g = torch.Generator().manual_seed(9)
    idxs = torch.randint(0, 3, (len(boxes),), generator=g)
    keep = batched_nms_rotated(boxes, scores, idxs, 0.3)
    np.testing.assert_array_equal(keep.numpy(), per_category(reference_nms_rotated, boxes, scores, idxs, 0.3))
    # Same boxes in two categories: each category keeps its own.
    two = torch.cat([torch.zeros(len(boxes)), torch.ones(len(boxes))]).long()
    double = batched_nms_rotated(torch.cat([boxes, boxes]), torch.cat([scores, scores]), two, 0.3)
    assert len(double) == 2 * len(nms_rotated(boxes, scores, 0.3))


def random_hbb(n: int, extent: float, seed: int) -> torch.Tensor:
    """Random boxes, the last quarter near-copies of others."""
    g = torch.Generator().manual_seed(seed)
    m = n - n // 4
    xy = torch.rand(m, 2, generator=g) * extent
    boxes = torch.cat([xy, xy + torch.rand(m, 2, generator=g) * 80], 1)
    copies = boxes[: n - m] + torch.randn(n - m, 4, generator=g) * 3
    copies[:, 2:] = torch.maximum(copies[:, 2:], copies[:, :2])
    return torch.cat([boxes, copies])


@pytest.fixture(params=["sweep", "grid"])
def horizontal_path(request, monkeypatch):
    """Horizontal NMS on the CPU both ways: the sweep over boxes sorted by left edge, and the grid."""
    if request.param == "grid":
        monkeypatch.setattr(nms_module, "_SWEEP_MAX_BOXES", 0)
    return request.param


@pytest.mark.parametrize("thr", [0.0, 0.3, 0.5, 0.8])
def test_nms_horizontal_matches_reference(thr, horizontal_path):
    boxes = random_hbb(600, 500, seed=10)
    boxes[::37, 2] = boxes[::37, 0]  # some zero-width boxes
    scores = (torch.rand(600, generator=torch.Generator().manual_seed(10)) * 8).round() / 8  # ties
    ref = reference_nms_horizontal(boxes, scores, thr)
    assert 0 < len(ref) < len(boxes)
    np.testing.assert_array_equal(nms_horizontal(boxes, scores, thr).numpy(), ref)


def test_batched_nms_horizontal_is_per_category(horizontal_path):
    boxes = random_hbb(500, 400, seed=11)
    scores = torch.rand(500, generator=torch.Generator().manual_seed(11))
    idxs = torch.randint(0, 4, (500,), generator=torch.Generator().manual_seed(12))
    keep = batched_nms_horizontal(boxes, scores, idxs, 0.5)
    np.testing.assert_array_equal(keep.numpy(), per_category(reference_nms_horizontal, boxes, scores, idxs, 0.5))


def pyramid_proposals(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Horizontal boxes like the RPN's per-level proposals on a 1024 px window: five categories whose
    sides differ by 2x from one to the next (32 to 512 px), dense within each."""
    g = torch.Generator().manual_seed(seed)
    parts, levels = [], []
    for level, (n, side) in enumerate(((600, 32), (500, 64), (300, 128), (120, 256), (40, 512))):
        c = torch.rand(n, 2, generator=g) * 1024
        wh = side * (0.7 + 0.6 * torch.rand(n, 2, generator=g))
        parts.append(torch.cat([c - wh / 2, c + wh / 2], 1))
        levels.append(torch.full((n,), level))
    boxes, idxs = torch.cat(parts), torch.cat(levels)
    return boxes, torch.rand(len(boxes), generator=g), idxs


@pytest.mark.parametrize("thr", [0.3, 0.8])
def test_batched_nms_on_categories_of_very_different_sizes(thr, monkeypatch):
    """One category at a time (the RPN's levels) and one grid for all give the reference's result."""
    boxes, scores, idxs = pyramid_proposals(seed=15)
    ref = per_category(reference_nms_horizontal, boxes, scores, idxs, thr)
    assert 0 < len(ref) < len(boxes)
    np.testing.assert_array_equal(batched_nms_horizontal(boxes, scores, idxs, thr).numpy(), ref)
    rotated = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2], scores[:, None] - 0.5], 1)
    ref_rotated = per_category(reference_nms_rotated, rotated, scores, idxs, thr)
    np.testing.assert_array_equal(batched_nms_rotated(rotated, scores, idxs, thr).numpy(), ref_rotated)
    monkeypatch.setattr(nms_module, "_MAX_SPLIT_GROUPS", 0)  # all categories on one grid
    monkeypatch.setattr(nms_module, "_SWEEP_MAX_BOXES", 0)
    np.testing.assert_array_equal(batched_nms_horizontal(boxes, scores, idxs, thr).numpy(), ref)
    np.testing.assert_array_equal(batched_nms_rotated(rotated, scores, idxs, thr).numpy(), ref_rotated)


def test_horizontal_sweep_hands_over_to_the_grid_beyond_its_pair_budget(monkeypatch):
    boxes, scores, idxs = pyramid_proposals(seed=18)
    ref = per_category(reference_nms_horizontal, boxes, scores, idxs, 0.5)
    answers = []
    sweep = nms_module._sweep_horizontal

    def spy(*args):
        answers.append(sweep(*args))
        return answers[-1]

    monkeypatch.setattr(nms_module, "_sweep_horizontal", spy)
    np.testing.assert_array_equal(batched_nms_horizontal(boxes, scores, idxs, 0.5).numpy(), ref)
    assert answers[-1] is not None
    monkeypatch.setattr(nms_module, "_SWEEP_MAX_PAIRS", 100)
    np.testing.assert_array_equal(batched_nms_horizontal(boxes, scores, idxs, 0.5).numpy(), ref)
    assert answers[-1] is None


def test_batched_nms_with_more_categories_than_are_split(horizontal_path):
    boxes = random_hbb(800, 300, seed=16)
    scores = torch.rand(800, generator=torch.Generator().manual_seed(16))
    idxs = torch.randint(0, nms_module._MAX_SPLIT_GROUPS + 10, (800,), generator=torch.Generator().manual_seed(17))
    keep = batched_nms_horizontal(boxes, scores, idxs, 0.3)
    np.testing.assert_array_equal(keep.numpy(), per_category(reference_nms_horizontal, boxes, scores, idxs, 0.3))


def test_empty_and_bad_inputs():
    for fn, width in ((nms_rotated, 5), (nms_horizontal, 4)):
        keep = fn(torch.zeros(0, width), torch.zeros(0), 0.5)
        assert keep.shape == (0,) and keep.dtype == torch.int64
        one = torch.tensor([[1.0, 1.0, 4.0, 3.0, 0.0][:width]])
        assert fn(one, torch.tensor([0.3]), 0.5).tolist() == [0]
        with pytest.raises(ValueError):
            fn(one, torch.tensor([0.3]), -0.1)
        with pytest.raises(ValueError):
            fn(one * float("nan"), torch.tensor([0.3]), 0.5)
        with pytest.raises(ValueError):
            fn(one, torch.tensor([0.3, 0.2]), 0.5)
    with pytest.raises(ValueError):
        nms_horizontal(torch.tensor([[5.0, 0.0, 1.0, 2.0]]), torch.tensor([1.0]), 0.5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    boxes, scores = detections(2000, 6000, seed=13)
    cpu = nms_rotated(boxes, scores, 0.4)
    # float64 on the GPU: the same exact decisions.
    keep = nms_rotated(boxes.double().cuda(), scores.cuda(), 0.4)
    assert keep.is_cuda and keep.dtype == torch.int64
    assert torch.equal(keep.cpu(), cpu)
    # float32 on the GPU: IoU within ~1e-5, so only pairs that close to the threshold may differ.
    keep32 = nms_rotated(boxes.cuda(), scores.cuda(), 0.4).cpu()
    assert len(set(keep32.tolist()) ^ set(cpu.tolist())) <= max(2, len(cpu) // 500)
    idxs = torch.randint(0, 3, (len(boxes),), generator=torch.Generator().manual_seed(13))
    batched = batched_nms_rotated(boxes.double().cuda(), scores.cuda(), idxs.cuda(), 0.4)
    assert torch.equal(batched.cpu(), batched_nms_rotated(boxes, scores, idxs, 0.4))
    hbb = random_hbb(3000, 2000, seed=14).double()
    horizontal = nms_horizontal(hbb.cuda(), scores[:3000].cuda(), 0.5)
    assert torch.equal(horizontal.cpu(), nms_horizontal(hbb, scores[:3000], 0.5))


def test_nms_runs_on_one_cpu_thread_and_restores_the_count(monkeypatch):
    seen = []
    for name in ("_greedy_nms", "_sweep_horizontal"):
        inner = getattr(nms_module, name)

        def spy(*args, inner=inner):
            seen.append(torch.get_num_threads())
            return inner(*args)

        monkeypatch.setattr(nms_module, name, spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        boxes, scores = detections(30, 300, seed=19)
        nms_rotated(boxes, scores, 0.4)
        hbb = random_hbb(200, 300, seed=19)
        nms_horizontal(hbb, torch.rand(200), 0.5)
        monkeypatch.setattr(nms_module, "_SWEEP_MAX_BOXES", 0)
        nms_horizontal(hbb, torch.rand(200), 0.5)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
