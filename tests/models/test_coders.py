import math

import pytest
import torch

from hbdnet.boxes.convention import le90_to_oc, obb_to_poly, regularize_le90
from hbdnet.models.coders import (
    DeltaXYWHAOBBoxCoder,
    DeltaXYWHBBoxCoder,
    MidpointOffsetCoder,
    poly_to_obb_oc,
)


def same_rectangle(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-3) -> bool:
    """Rows describe the same rectangles (compared in le90, theta modulo pi)."""
    ra, rb = regularize_le90(a.double()), regularize_le90(b.double())
    d_theta = torch.remainder(ra[:, 4] - rb[:, 4] + math.pi / 2, math.pi) - math.pi / 2
    # Near-square boxes have an ill-defined long axis; compare corners there instead.
    square = (ra[:, 2] - ra[:, 3]).abs() < 1e-3
    corners_a = obb_to_poly(ra).reshape(-1, 4, 2)
    corners_b = obb_to_poly(rb).reshape(-1, 4, 2)
    corner_dist = torch.cdist(corners_a, corners_b).amin(-1).amax(-1)
    ok_rows = torch.where(
        square,
        corner_dist < atol * 10,
        ((ra[:, :4] - rb[:, :4]).abs().amax(-1) < atol) & (d_theta.abs() < atol),
    )
    return bool(ok_rows.all())


def random_oc_boxes(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cx = torch.rand(n, generator=g) * 500
    cy = torch.rand(n, generator=g) * 500
    w = 5 + torch.rand(n, generator=g) * 200
    h = 5 + torch.rand(n, generator=g) * 60
    t = (torch.rand(n, generator=g) - 0.5) * math.pi
    return le90_to_oc(regularize_le90(torch.stack([cx, cy, w, h, t], -1)))


def anchors_around(boxes: torch.Tensor, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = boxes.shape[0]
    cx = boxes[:, 0] + (torch.rand(n, generator=g) - 0.5) * 20
    cy = boxes[:, 1] + (torch.rand(n, generator=g) - 0.5) * 20
    s = 16 + torch.rand(n, generator=g) * 100
    return torch.stack([cx - s, cy - s / 2, cx + s, cy + s / 2], -1)


class TestMidpointOffsetCoder:
    def test_zero_deltas_decode_to_the_inscribed_diamond(self):
        # alpha = beta = 0: contact points at the edge midpoints of a 10 x 10 anchor -> a square at 45 deg.
        boxes = MidpointOffsetCoder().decode(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.zeros(1, 6))
        expected = torch.tensor([[5.0, 5.0, 5 * math.sqrt(2), 5 * math.sqrt(2), math.pi / 4]])
        torch.testing.assert_close(boxes, expected)

    def test_encode_axis_aligned_gt_hand_computed(self):
        # oc row of an axis-aligned 10 x 10 box has theta = pi/2; its top contact point is the top-right
        # corner (alpha = +0.5) and its right contact point the bottom-right corner (beta = +0.5), and
        # the stds 0.5 double them.
        anchor = torch.tensor([[0.0, 0.0, 20.0, 10.0]])
        gt = torch.tensor([[12.0, 5.0, 10.0, 20.0, math.pi / 2]])  # hull 20 wide, 10 high
        deltas = MidpointOffsetCoder().encode(anchor, gt)
        expected = torch.tensor([[2 / 20, 0.0, 0.0, 0.0, 1.0, 1.0]])
        torch.testing.assert_close(deltas, expected)

    def test_encode_hand_computed_rotated(self):
        # A 2 x 1 rectangle at 30 deg around the origin; anchor = its hull.
        w, h, t = 2.0, 1.0, math.pi / 6
        gt = torch.tensor([[0.0, 0.0, w, h, t]])
        hw = w * math.cos(t) + h * math.sin(t)
        hh = w * math.sin(t) + h * math.cos(t)
        anchor = torch.tensor([[-hw / 2, -hh / 2, hw / 2, hh / 2]])
        # Top corner p0 = -u - v, right corner p1 = u - v.
        ux, uy = w / 2 * math.cos(t), w / 2 * math.sin(t)
        vx, vy = -h / 2 * math.sin(t), h / 2 * math.cos(t)
        alpha = (-ux - vx) / hw
        beta = (uy - vy) / hh
        deltas = MidpointOffsetCoder().encode(anchor, gt)
        torch.testing.assert_close(deltas, torch.tensor([[0.0, 0.0, 0.0, 0.0, alpha / 0.5, beta / 0.5]]))

    def test_round_trip_returns_the_same_oc_rows(self):
        gt = random_oc_boxes(200)
        # Near-axis-aligned boxes hit the 0.1 px tie rule of the encoder (next test); theta = pi/2 rows
        # decode to the theta = 0 row of the same rectangle.
        t = gt[:, 4]
        gt = gt[gt[:, 2:4].amin(1) * torch.minimum(t.sin(), t.cos()) > 0.2]
        assert gt.shape[0] > 150
        anchors = anchors_around(gt)
        coder = MidpointOffsetCoder()
        decoded = coder.decode(anchors, coder.encode(anchors, gt))
        torch.testing.assert_close(decoded, gt, atol=2e-3, rtol=1e-4)

    def test_contact_points_within_a_tenth_of_a_pixel_tie_like_mmrotate(self):
        # h * sin(theta) = 0.08 px: the two right-most corners count as tied and the lower one wins,
        # so beta is +0.5 (1.0 after the 0.5 std) although the true right contact point is near the top.
        gt = torch.tensor([[0.0, 0.0, 100.0, 20.0, 0.004]])
        anchor = torch.tensor([[-50.0, -10.0, 50.0, 10.0]])
        deltas = MidpointOffsetCoder().encode(anchor, gt)
        torch.testing.assert_close(deltas[0, 5], torch.tensor(1.0))
        assert deltas[0, 4] < 0

    def test_axis_aligned_gt_decodes_to_theta_zero_row(self):
        gt = torch.tensor([[50.0, 40.0, 10.0, 30.0, math.pi / 2]])  # oc: w along y
        anchor = torch.tensor([[30.0, 30.0, 70.0, 50.0]])
        coder = MidpointOffsetCoder()
        decoded = coder.decode(anchor, coder.encode(anchor, gt))
        torch.testing.assert_close(decoded, torch.tensor([[50.0, 40.0, 30.0, 10.0, 0.0]]), atol=1e-4, rtol=0)

    def test_decoded_theta_range_is_mmrotates(self):
        g = torch.Generator().manual_seed(3)
        anchors = anchors_around(random_oc_boxes(500))
        deltas = torch.randn(500, 6, generator=g)
        boxes = MidpointOffsetCoder().decode(anchors, deltas)
        assert (boxes[:, 4] >= 0).all() and (boxes[:, 4] < math.pi / 2).all()
        # Clamped offsets of +-0.5 can collapse the rectangle to a segment, as in mmrotate: sizes >= 0.
        assert torch.isfinite(boxes).all() and (boxes[:, 2:4] >= 0).all()

    def test_decode_is_a_rectangle_through_the_contact_points(self):
        g = torch.Generator().manual_seed(4)
        anchors = anchors_around(random_oc_boxes(50))
        deltas = torch.randn(50, 6, generator=g) * 0.3
        boxes = MidpointOffsetCoder().decode(anchors, deltas)
        # Centre = decoded hull centre.
        pw, ph = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
        gx = (anchors[:, 0] + anchors[:, 2]) / 2 + pw * deltas[:, 0]
        gy = (anchors[:, 1] + anchors[:, 3]) / 2 + ph * deltas[:, 1]
        torch.testing.assert_close(boxes[:, 0], gx)
        torch.testing.assert_close(boxes[:, 1], gy)

    def test_wh_clamp(self):
        anchor = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
        deltas = torch.tensor([[0.0, 0.0, 50.0, -50.0, 0.5, 0.5]])  # alpha/beta 0.25 after stds
        boxes = MidpointOffsetCoder().decode(anchor, deltas)
        # Hull clamped to 10 * 1000/16 by 10 * 16/1000; the rectangle's hull is not larger than that.
        hull_w = boxes[0, 2] * math.cos(boxes[0, 4]) + boxes[0, 3] * math.sin(boxes[0, 4])
        assert hull_w <= 10 * 1000 / 16 * (1 + 1e-4)
        assert hull_w >= 10 * 1000 / 16 * 0.5


class TestPolyToObbOc:
    def test_reads_edge_p0_p1_as_w(self):
        t = 0.3
        box = torch.tensor([[10.0, 20.0, 8.0, 2.0, t]])
        torch.testing.assert_close(poly_to_obb_oc(obb_to_poly(box)), box)

    def test_folds_into_zero_to_half_pi(self):
        box = torch.tensor([[10.0, 20.0, 8.0, 2.0, -0.3]])  # not an oc row
        out = poly_to_obb_oc(obb_to_poly(box))
        assert 0 <= out[0, 4] < math.pi / 2
        assert same_rectangle(out, box)


class TestDeltaXYWHAOBBoxCoder:
    def test_hand_computed(self):
        p = torch.tensor([[10.0, 20.0, 40.0, 10.0, 0.3]])
        gt = torch.tensor(
            [[10 + 4 * math.cos(0.3), 20 + 4 * math.sin(0.3), 40 * math.exp(0.1), 10 * math.exp(-0.2), 0.35]]
        )
        deltas = DeltaXYWHAOBBoxCoder().encode(p, gt)
        torch.testing.assert_close(deltas, torch.tensor([[1.0, 0.0, 0.5, -1.0, 0.5]]))

    def test_projection_on_proposal_axes(self):
        # Centre offset along the proposal's h axis only.
        p = torch.tensor([[0.0, 0.0, 40.0, 10.0, math.pi / 2]])
        gt = torch.tensor([[-3.0, 0.0, 40.0, 10.0, math.pi / 2]])  # (-sin, cos) at pi/2 is (-1, 0)
        deltas = DeltaXYWHAOBBoxCoder().encode(p, gt)
        torch.testing.assert_close(deltas, torch.tensor([[0.0, 3.0, 0.0, 0.0, 0.0]]), atol=1e-6, rtol=0)

    def test_edge_swap_picks_the_smaller_turn(self):
        p = torch.tensor([[0.0, 0.0, 40.0, 10.0, 1.4]])
        gt = torch.tensor([[0.0, 0.0, 12.0, 36.0, 0.1]])  # same orientation family, described turned
        deltas = DeltaXYWHAOBBoxCoder().encode(p, gt)
        expected_da = (0.1 - 1.4 + math.pi / 2) / 0.1
        torch.testing.assert_close(deltas[0, 4], torch.tensor(expected_da))
        torch.testing.assert_close(deltas[0, 2], torch.tensor(math.log(36 / 40) / 0.2))
        torch.testing.assert_close(deltas[0, 3], torch.tensor(math.log(12 / 10) / 0.2))

    def test_round_trip_same_rectangles_and_w_ge_h(self):
        gt = random_oc_boxes(300, seed=5)
        g = torch.Generator().manual_seed(6)
        props = gt + torch.randn(300, 5, generator=g) * torch.tensor([3.0, 3.0, 4.0, 2.0, 0.1])
        props[:, 2:4] = props[:, 2:4].abs() + 1
        coder = DeltaXYWHAOBBoxCoder()
        out = coder.decode(props, coder.encode(props, gt))
        assert (out[:, 2] >= out[:, 3]).all()
        assert same_rectangle(out, gt)

    def test_decode_clamps_centres_and_sizes(self):
        p = torch.tensor([[5.0, 5.0, 10.0, 10.0, 0.0]])
        d = torch.tensor([[-10.0, 40.0, 100.0, 0.0, 0.0]])
        out = DeltaXYWHAOBBoxCoder().decode(p, d, max_shape=(32, 64))
        assert out[0, 0] == 0 and out[0, 1] == 31
        torch.testing.assert_close(out[0, 2], torch.tensor(10 * 1000 / 16))

    def test_decode_swaps_to_w_ge_h_with_quarter_turn(self):
        p = torch.tensor([[0.0, 0.0, 10.0, 20.0, 0.2]])
        out = DeltaXYWHAOBBoxCoder().decode(p, torch.zeros(1, 5))
        torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 20.0, 10.0, 0.2 + math.pi / 2]]))


class TestDeltaXYWHBBoxCoder:
    def test_round_trip_and_clip(self):
        boxes = torch.tensor([[10.0, 10.0, 50.0, 30.0], [0.0, 5.0, 8.0, 60.0]])
        gt = torch.tensor([[12.0, 8.0, 55.0, 35.0], [1.0, 4.0, 10.0, 70.0]])
        coder = DeltaXYWHBBoxCoder()
        torch.testing.assert_close(coder.decode(boxes, coder.encode(boxes, gt)), gt)
        clipped = coder.decode(boxes, coder.encode(boxes, gt), max_shape=(64, 50))
        assert clipped[:, 2].max() <= 50 and clipped[:, 3].max() <= 64

    def test_hand_computed(self):
        d = DeltaXYWHBBoxCoder().encode(torch.tensor([[0.0, 0.0, 10.0, 20.0]]), torch.tensor([[1.0, 2.0, 11.0, 22.0]]))
        torch.testing.assert_close(d, torch.tensor([[1.0, 1.0, 0.0, 0.0]]))


@pytest.mark.parametrize("coder", [MidpointOffsetCoder(), DeltaXYWHAOBBoxCoder(), DeltaXYWHBBoxCoder()])
def test_empty_inputs(coder):
    dim = {MidpointOffsetCoder: 6, DeltaXYWHAOBBoxCoder: 5, DeltaXYWHBBoxCoder: 4}[type(coder)]
    base = 4 if isinstance(coder, (MidpointOffsetCoder, DeltaXYWHBBoxCoder)) else 5
    out = coder.decode(torch.zeros(0, base), torch.zeros(0, dim))
    assert out.shape[0] == 0
