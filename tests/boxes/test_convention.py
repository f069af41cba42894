import math

import numpy as np
import pytest
import shapely
import torch

from hbdnet.boxes import (
    hbb_to_obb,
    le90_to_oc,
    obb_to_hbb,
    obb_to_poly,
    oc_to_le90,
    poly_to_obb,
    regularize_le90,
)

HALF_PI = math.pi / 2


def random_boxes(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cx = torch.rand(n, generator=g, dtype=torch.float64) * 2000
    cy = torch.rand(n, generator=g, dtype=torch.float64) * 2000
    w = torch.rand(n, generator=g, dtype=torch.float64) * 300 + 1
    h = torch.rand(n, generator=g, dtype=torch.float64) * 300 + 1
    t = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 4 * math.pi
    return torch.stack([cx, cy, w, h, t], -1)


def same_rectangle(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-6) -> bool:
    """Two rows describe the same rectangle when their corner sets coincide (in any order)."""
    pa = obb_to_poly(a).reshape(-1, 4, 2)
    pb = obb_to_poly(b).reshape(-1, 4, 2)
    d = (pa[:, :, None, :] - pb[:, None, :, :]).norm(dim=-1)  # (N, 4, 4)
    return bool((d.amin(-1).amax(-1) < tol).all())


def test_regularize_le90_ranges_and_rectangle():
    boxes = random_boxes(5000)
    le90 = regularize_le90(boxes)
    assert (le90[:, 2] >= le90[:, 3]).all()
    assert (le90[:, 4] >= -HALF_PI).all() and (le90[:, 4] < HALF_PI).all()
    assert same_rectangle(boxes, le90)
    # idempotent
    assert torch.allclose(regularize_le90(le90), le90)


def test_oc_ranges_and_round_trip():
    boxes = regularize_le90(random_boxes(5000, seed=1))
    oc = le90_to_oc(boxes)
    assert (oc[:, 4] > 0).all() and (oc[:, 4] <= HALF_PI + 1e-12).all()
    assert same_rectangle(boxes, oc)
    assert torch.allclose(oc_to_le90(oc), boxes, atol=1e-9)


@pytest.mark.parametrize(
    "le90, oc",
    [
        # a horizontal box: oc has no theta 0, so it becomes theta pi/2 with w, h swapped
        ((10.0, 20.0, 100.0, 10.0, 0.0), (10.0, 20.0, 10.0, 100.0, HALF_PI)),
        # a vertical box in le90 is theta -pi/2; in oc it is the same rectangle with theta pi/2
        ((0.0, 0.0, 100.0, 10.0, -HALF_PI), (0.0, 0.0, 100.0, 10.0, HALF_PI)),
        ((0.0, 0.0, 100.0, 10.0, 0.3), (0.0, 0.0, 100.0, 10.0, 0.3)),
        ((0.0, 0.0, 100.0, 10.0, -0.3), (0.0, 0.0, 10.0, 100.0, HALF_PI - 0.3)),
    ],
)
def test_oc_known_cases(le90, oc):
    got = le90_to_oc(torch.tensor([le90], dtype=torch.float64))[0]
    assert torch.allclose(got, torch.tensor(oc, dtype=torch.float64), atol=1e-12)
    back = oc_to_le90(torch.tensor([oc], dtype=torch.float64))[0]
    assert torch.allclose(back, torch.tensor(le90, dtype=torch.float64), atol=1e-12)


def test_corners_follow_documented_order():
    box = torch.tensor([[50.0, 40.0, 20.0, 10.0, HALF_PI / 3]], dtype=torch.float64)
    poly = obb_to_poly(box).reshape(4, 2)
    c, s = math.cos(HALF_PI / 3), math.sin(HALF_PI / 3)
    u = torch.tensor([10 * c, 10 * s], dtype=torch.float64)
    v = torch.tensor([-5 * s, 5 * c], dtype=torch.float64)
    centre = torch.tensor([50.0, 40.0], dtype=torch.float64)
    expected = torch.stack([centre - u - v, centre + u - v, centre + u + v, centre - u + v])
    assert torch.allclose(poly, expected)
    # the first edge runs along w: its direction is theta
    edge = poly[1] - poly[0]
    assert math.isclose(math.atan2(edge[1], edge[0]), HALF_PI / 3, abs_tol=1e-12)


def test_poly_round_trip():
    boxes = regularize_le90(random_boxes(5000, seed=2))
    back = poly_to_obb(obb_to_poly(boxes))
    assert same_rectangle(boxes, back, tol=1e-6)
    assert torch.allclose(back[:, 2:4], boxes[:, 2:4], atol=1e-6)


def test_poly_to_obb_is_minimum_area_rectangle_of_irregular_quads():
    rng = np.random.default_rng(3)
    polys = rng.uniform(0, 500, size=(500, 8))
    got = poly_to_obb(torch.from_numpy(polys))
    ref = shapely.oriented_envelope(shapely.multipoints(polys.reshape(-1, 4, 2)))
    assert np.allclose(got[:, 2].numpy() * got[:, 3].numpy(), shapely.area(ref), rtol=1e-9, atol=1e-6)
    # the rectangle encloses all the points
    rect = shapely.polygons(obb_to_poly(got).numpy().reshape(-1, 4, 2))
    pts = shapely.multipoints(polys.reshape(-1, 4, 2))
    assert shapely.covers(shapely.buffer(rect, 1e-6), pts).all()


def test_poly_to_obb_dota_label_order_independent():
    # the same rectangle given from any starting corner and in either winding
    box = torch.tensor([[300.0, 200.0, 180.0, 40.0, 0.7]], dtype=torch.float64)
    pts = obb_to_poly(box).reshape(4, 2)
    for start in range(4):
        for order in (pts, pts.flip(0)):
            p = torch.roll(order, start, 0).reshape(1, 8)
            assert torch.allclose(poly_to_obb(p), box, atol=1e-9)


def test_hbb_conversions():
    boxes = random_boxes(1000, seed=4)
    hbb = obb_to_hbb(boxes)
    pts = obb_to_poly(boxes).reshape(-1, 4, 2)
    assert torch.allclose(hbb[:, 0], pts[..., 0].amin(-1))
    assert torch.allclose(hbb[:, 1], pts[..., 1].amin(-1))
    assert torch.allclose(hbb[:, 2], pts[..., 0].amax(-1))
    assert torch.allclose(hbb[:, 3], pts[..., 1].amax(-1))
    obb = hbb_to_obb(hbb)
    assert torch.allclose(obb_to_hbb(obb), hbb, atol=1e-9)
    assert (obb[:, 2] >= obb[:, 3]).all()


def test_float32_and_batch_shapes():
    boxes = random_boxes(24, seed=5).float().reshape(2, 3, 4, 5)
    assert regularize_le90(boxes).shape == (2, 3, 4, 5)
    assert obb_to_poly(boxes).shape == (2, 3, 4, 8)
    assert poly_to_obb(obb_to_poly(boxes)).shape == (2, 3, 4, 5)
    assert le90_to_oc(boxes).dtype == torch.float32
