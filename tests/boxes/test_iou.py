import math

import numpy as np
import pytest
import shapely
import torch

from hbdnet.boxes import iou as iou_module
from hbdnet.boxes import le90_to_oc, obb_to_hbb, obb_to_poly, regularize_le90
from hbdnet.boxes.iou import box_iou_rotated, intersection_area_rotated

HALF_PI = math.pi / 2
TOL = 1e-4


def shapely_overlap(b1: torch.Tensor, b2: torch.Tensor, mode: str = "iou") -> np.ndarray:
    """Reference for aligned pairs: shapely on the corner polygons (float64). Zero-area boxes give 0."""
    p1 = shapely.polygons(obb_to_poly(b1.double()).reshape(-1, 4, 2).numpy())
    p2 = shapely.polygons(obb_to_poly(b2.double()).reshape(-1, 4, 2).numpy())
    a1 = (b1[:, 2] * b1[:, 3]).abs().double().numpy()
    a2 = (b2[:, 2] * b2[:, 3]).abs().double().numpy()
    ok = (a1 > 0) & (a2 > 0)
    inter = np.zeros(len(a1))
    inter[ok] = shapely.area(shapely.intersection(p1[ok], p2[ok]))
    denom = a1 + a2 - inter if mode == "iou" else a1
    return np.where(ok, inter / np.where(ok, denom, 1.0), 0.0)


def random_boxes(n: int, seed: int, extent: float, max_size: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * extent
    return torch.cat([xy, 5 + torch.rand(n, 2, generator=g) * max_size, torch.rand(n, 1, generator=g) * 7], 1)


def random_pairs(n: int, seed: int, spread: float = 60.0, max_size: float = 300.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs of boxes near each other (most overlap), any angle, in double precision."""
    g = torch.Generator().manual_seed(seed)
    c1 = torch.rand(n, 2, generator=g, dtype=torch.float64) * 2000
    c2 = c1 + (torch.rand(n, 2, generator=g, dtype=torch.float64) - 0.5) * 2 * spread
    wh1 = 1 + torch.rand(n, 2, generator=g, dtype=torch.float64) * max_size
    wh2 = 1 + torch.rand(n, 2, generator=g, dtype=torch.float64) * max_size
    t1 = (torch.rand(n, 1, generator=g, dtype=torch.float64) - 0.5) * 4 * math.pi
    t2 = (torch.rand(n, 1, generator=g, dtype=torch.float64) - 0.5) * 4 * math.pi
    return torch.cat([c1, wh1, t1], 1), torch.cat([c2, wh2, t2], 1)


def special_pairs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Degenerate and boundary cases, each a labelled group of pairs."""
    g = torch.Generator().manual_seed(seed)
    n = 200

    def rnd(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    base = torch.cat([rnd(n, 2) * 1000, 5 + rnd(n, 2) * 200, (rnd(n, 1) - 0.5) * math.pi], 1)
    cx, cy, w, h, t = base.unbind(1)
    cos, sin = torch.cos(t), torch.sin(t)
    groups: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    groups.append(("identical", base, base.clone()))
    groups.append(("le90 vs oc", regularize_le90(base), le90_to_oc(regularize_le90(base))))
    groups.append(("w/h swapped, quarter turn", base, torch.stack([cx, cy, h, w, t + HALF_PI], 1)))
    # Nested: scaled down about a point of the inner half, and turned by a half turn (same rectangle).
    scale = 0.2 + 0.6 * rnd(n)
    u, v = (rnd(n) - 0.5) * (1 - scale) * w, (rnd(n) - 0.5) * (1 - scale) * h
    inner = torch.stack([cx + u * cos - v * sin, cy + u * sin + v * cos, w * scale, h * scale, t + math.pi], 1)
    groups.append(("nested", base, inner))
    # Sharing an edge: shifted by w along the box's own axis. Sharing a corner: by (w, h).
    groups.append(("touching edge", base, torch.stack([cx + w * cos, cy + w * sin, w, h, t], 1)))
    groups.append(
        ("touching corner", base, torch.stack([cx + w * cos - h * sin, cy + w * sin + h * cos, w, h, t], 1))
    )
    groups.append(("half overlap", base, torch.stack([cx + w / 2 * cos, cy + w / 2 * sin, w, h, t], 1)))
    # Aspect ratio 1:100, crossing and nearly parallel.
    thin1 = torch.stack([cx, cy, 1000 + 0 * w, 10 + 0 * w, t], 1)
    thin2 = torch.stack([cx + 3 * rnd(n), cy + 3 * rnd(n), 1000 + 0 * w, 10 + 0 * w, t + (rnd(n) - 0.5) * 0.02], 1)
    groups.append(("1:100 near parallel", thin1, thin2))
    crossing = torch.stack([cx, cy, 1000 + 0 * w, 10 + 0 * w, t + rnd(n) * math.pi], 1)
    groups.append(("1:100 crossing", thin1, crossing))
    # Angles at the le90 and oc interval ends.
    for name, angle in [
        ("le90 -pi/2", -HALF_PI),
        ("le90 just below pi/2", math.nextafter(HALF_PI, 0)),
        ("oc pi/2", HALF_PI),
        ("oc tiny positive", 1e-9),
    ]:
        fixed = torch.stack([cx, cy, w, h, torch.full_like(t, angle)], 1)
        other = torch.stack([cx + (rnd(n) - 0.5) * w, cy + (rnd(n) - 0.5) * h, w, h, t], 1)
        groups.append((name, fixed, other))
    far = base.clone()
    far[:, :2] = 16000 + rnd(n, 2) * 50
    far2 = far.clone()
    far2[:, :2] += (rnd(n, 2) - 0.5) * 20
    far2[:, 4] += (rnd(n) - 0.5) * 0.5
    groups.append(("huge coordinates", far, far2))
    zero_w = base.clone()
    zero_w[:, 2] = 0
    zero_h = base.clone()
    zero_h[:, 3] = 0
    point = base.clone()
    point[:, 2:4] = 0
    groups.append(("zero width", zero_w, base))
    groups.append(("zero height", base, zero_h))
    groups.append(("point", point, point.clone()))
    labels = [name for name, a, _ in groups for _ in range(a.shape[0])]
    return torch.cat([a for _, a, _ in groups]), torch.cat([b for _, _, b in groups]), labels


def assert_close_by_group(ours: np.ndarray, ref: np.ndarray, labels: list[str]) -> None:
    err = np.abs(ours - ref)
    label = np.array(labels)
    worst = {name: float(err[label == name].max()) for name in dict.fromkeys(labels)}
    bad = {k: v for k, v in worst.items() if not v <= TOL}
    assert not bad, f"max |IoU error| above {TOL}: {bad}"


def test_iou_matches_shapely_on_random_pairs():
    b1, b2 = random_pairs(12000, seed=0)
    ref = shapely_overlap(b1, b2)
    assert (ref > 0).mean() > 0.5  # most pairs overlap, so the comparison has teeth
    ours = box_iou_rotated(b1, b2, aligned=True).numpy()
    assert np.abs(ours - ref).max() <= TOL


def test_iou_float32_input_matches_shapely():
    b1, b2 = random_pairs(5000, seed=1)
    b1, b2 = b1.float(), b2.float()
    ours = box_iou_rotated(b1, b2, aligned=True)
    assert ours.dtype == torch.float32
    ref = shapely_overlap(b1.double(), b2.double())
    assert np.abs(ours.double().numpy() - ref).max() <= TOL


def test_iou_special_cases_match_shapely():
    b1, b2, labels = special_pairs()
    ref = shapely_overlap(b1, b2)
    ours = box_iou_rotated(b1, b2, aligned=True).numpy()
    assert_close_by_group(ours, ref, labels)
    assert np.isfinite(ours).all()
    label = np.array(labels)
    # Values known without shapely.
    assert np.allclose(ours[label == "identical"], 1, atol=1e-9)
    assert np.allclose(ours[label == "le90 vs oc"], 1, atol=1e-9)
    assert np.allclose(ours[label == "w/h swapped, quarter turn"], 1, atol=1e-9)
    assert np.allclose(ours[label == "half overlap"], 1 / 3, atol=1e-9)
    for name in ["touching edge", "touching corner"]:
        assert (ours[label == name] <= 1e-9).all(), name
    for name in ["zero width", "zero height", "point"]:
        assert (ours[label == name] == 0).all(), name
    nested = label == "nested"
    area_ratio = b2[nested, 2] * b2[nested, 3] / (b1[nested, 2] * b1[nested, 3])
    assert np.allclose(ours[nested], area_ratio.numpy(), atol=1e-9)


def test_iou_special_cases_float32():
    b1, b2, labels = special_pairs(seed=3)
    ref = shapely_overlap(b1.float().double(), b2.float().double())
    ours = box_iou_rotated(b1.float(), b2.float(), aligned=True).double().numpy()
    assert_close_by_group(ours, ref, labels)


def test_disjoint_boxes_with_overlapping_hulls_give_exactly_zero():
    g = torch.Generator().manual_seed(10)
    n = 3000

    def rnd() -> torch.Tensor:
        return torch.rand(n, generator=g, dtype=torch.float64)

    # Thin parallel boxes side by side: diagonal, so their hulls overlap; a gap between them.
    t, w, h = rnd() * math.pi, 50 + rnd() * 300, 2 + rnd() * 20
    gap, along = h * (1.01 + rnd()), (rnd() - 0.5) * w
    c = rnd()[:, None] * 1000 + torch.zeros(n, 2, dtype=torch.float64)
    b1 = torch.stack([c[:, 0], c[:, 1], w, h, t], 1)
    shift_x = along * torch.cos(t) - gap * torch.sin(t)
    shift_y = along * torch.sin(t) + gap * torch.cos(t)
    b2 = torch.stack([c[:, 0] + shift_x, c[:, 1] + shift_y, w, h, t], 1)
    assert (shapely_overlap(b1, b2) == 0).all()
    h1, h2 = obb_to_hbb(b1), obb_to_hbb(b2)
    hulls_overlap = (torch.maximum(h1[:, :2], h2[:, :2]) < torch.minimum(h1[:, 2:], h2[:, 2:])).all(1)
    assert hulls_overlap.double().mean() > 0.5
    ours = box_iou_rotated(b1, b2, aligned=True)
    assert (ours == 0).all()
    assert (box_iou_rotated(b1.float(), b2.float(), aligned=True) == 0).all()


def test_iof_matches_shapely():
    b1, b2 = random_pairs(4000, seed=2)
    s1, s2, labels = special_pairs(seed=4)
    b1, b2 = torch.cat([b1, s1]), torch.cat([b2, s2])
    ours = box_iou_rotated(b1, b2, mode="iof", aligned=True).numpy()
    assert np.abs(ours - shapely_overlap(b1, b2, mode="iof")).max() <= TOL
    # The inner box of a nested pair is entirely inside the outer one, and IoF is not symmetric.
    nested = torch.from_numpy(np.array(labels) == "nested")
    outer, inner = s1[nested], s2[nested]
    assert np.allclose(box_iou_rotated(inner, outer, mode="iof", aligned=True).numpy(), 1, atol=1e-9)
    expected = (inner[:, 2] * inner[:, 3] / (outer[:, 2] * outer[:, 3])).numpy()
    assert np.allclose(box_iou_rotated(outer, inner, mode="iof", aligned=True).numpy(), expected, atol=1e-9)


def test_matrix_matches_shapely_and_aligned():
    b1, b2 = random_boxes(70, 5, extent=400, max_size=150), random_boxes(90, 6, extent=400, max_size=150)
    for mode in ("iou", "iof"):
        ours = box_iou_rotated(b1, b2, mode=mode)
        assert ours.shape == (70, 90) and ours.dtype == torch.float32
        i, j = torch.meshgrid(torch.arange(70), torch.arange(90), indexing="ij")
        ref = shapely_overlap(b1[i.reshape(-1)].double(), b2[j.reshape(-1)].double(), mode).reshape(70, 90)
        assert (ref > 0).mean() > 0.1
        assert np.abs(ours.double().numpy() - ref).max() <= TOL
        aligned = box_iou_rotated(b1[i.reshape(-1)], b2[j.reshape(-1)], mode=mode, aligned=True).reshape(70, 90)
        assert torch.allclose(ours, aligned, atol=1e-6)


def test_hull_prefilter_and_chunking_change_nothing(monkeypatch):
    """Clipping every pair (no prefilter) and clipping in tiny chunks give the same matrix."""
    b = random_boxes(150, 7, extent=600, max_size=200)
    full = box_iou_rotated(b, b).double()
    i, j = torch.meshgrid(torch.arange(150), torch.arange(150), indexing="ij")
    bi, bj = b[i.reshape(-1)].double(), b[j.reshape(-1)].double()
    inter = intersection_area_rotated(bi, bj)
    area_i, area_j = bi[:, 2] * bi[:, 3], bj[:, 2] * bj[:, 3]
    brute = (inter / (area_i + area_j - inter)).reshape(150, 150)
    assert torch.allclose(full, brute, atol=1e-6)
    monkeypatch.setattr(iou_module, "_PAIR_CHUNK_CPU", 97)
    monkeypatch.setattr(iou_module, "_HULL_TEST_CHUNK", 1000)
    assert torch.allclose(box_iou_rotated(b, b).double(), full, atol=1e-7)


def test_empty_inputs():
    some = torch.tensor([[10.0, 10.0, 5.0, 3.0, 0.2]])
    none = torch.zeros(0, 5)
    assert box_iou_rotated(none, some).shape == (0, 1)
    assert box_iou_rotated(some, none).shape == (1, 0)
    assert box_iou_rotated(none, none, aligned=True).shape == (0,)
    assert box_iou_rotated(none, none, mode="iof").shape == (0, 0)


def test_bad_arguments():
    some = torch.tensor([[10.0, 10.0, 5.0, 3.0, 0.2]])
    with pytest.raises(ValueError):
        box_iou_rotated(some, some, mode="giou")
    with pytest.raises(ValueError):
        box_iou_rotated(some, some.repeat(2, 1), aligned=True)
    with pytest.raises(ValueError):
        box_iou_rotated(some[:, :4], some)


def test_same_answer_for_every_representation():
    b1, b2 = random_pairs(2000, seed=7)
    ref = box_iou_rotated(b1, b2, aligned=True)
    le90 = box_iou_rotated(regularize_le90(b1), le90_to_oc(regularize_le90(b2)), aligned=True)
    flipped = b2.clone()
    flipped[:, 4] += math.pi  # a half turn draws the same rectangle
    flipped[:, 2] *= -1  # and so does a negative width
    assert torch.allclose(ref, le90, atol=1e-9)
    assert torch.allclose(ref, box_iou_rotated(b1, flipped, aligned=True), atol=1e-9)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    b1, b2 = random_pairs(20000, seed=8)
    s1, s2, labels = special_pairs(seed=9)
    b1, b2 = torch.cat([b1, s1]).float(), torch.cat([b2, s2]).float()
    cpu = box_iou_rotated(b1, b2, aligned=True)
    gpu = box_iou_rotated(b1.cuda(), b2.cuda(), aligned=True)
    assert gpu.is_cuda and gpu.dtype == torch.float32
    assert_close_by_group(gpu.cpu().double().numpy()[-len(labels) :], cpu.double().numpy()[-len(labels) :], labels)
    assert (gpu.cpu() - cpu).abs().max() <= TOL
    m_cpu = box_iou_rotated(b1[:500], b2[:700])
    m_gpu = box_iou_rotated(b1[:500].cuda(), b2[:700].cuda(), mode="iou")
    assert (m_gpu.cpu() - m_cpu).abs().max() <= TOL
    # float64 on the GPU is as exact as the CPU
    exact = box_iou_rotated(b1.double().cuda(), b2.double().cuda(), aligned=True).cpu()
    assert (exact - cpu.double()).abs().max() <= 1e-6
