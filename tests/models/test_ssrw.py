import math

import pytest
import torch

from hbdnet.models.ssrw import ssrw_weights

CORNER_Q = (1 + math.log(2)) ** 2  # q at a GT corner (Qw = Qh = 1)


def weight_at(offset_w: float, offset_h: float, w: float, h: float, theta: float, mu: float = 0.3) -> float:
    """SSRW weight of a proposal centred at the given offsets (in units of the GT half-sides)."""
    gt = torch.tensor([[100.0, 50.0, w, h, theta]])
    u = torch.tensor([math.cos(theta), math.sin(theta)])
    v = torch.tensor([-math.sin(theta), math.cos(theta)])
    centre = gt[0, :2] + offset_w * w / 2 * u + offset_h * h / 2 * v
    return ssrw_weights(centre[None], gt, mu).item()


@pytest.mark.parametrize(
    ("ratio", "centre", "corner"),
    [(1, 0.30, 0.86), (5, 0.78, 2.24), (10, 0.99, 2.84), (30, 1.32, 3.78)],
)
def test_magnitudes_table_of_the_method_digest(ratio, centre, corner):
    w, h = 10.0 * ratio, 10.0
    assert weight_at(0, 0, w, h, 0.3) == pytest.approx(centre, abs=0.006)
    assert weight_at(1, 1, w, h, 0.3) == pytest.approx(corner, abs=0.006)


def test_hand_computed_value():
    # r = 4, Qw = 0.5, Qh = 0.25, mu = 0.3
    expected = 0.3 * (1 + math.log(1.5)) * (1 + math.log(1.25)) * (1 + math.log(4))
    assert weight_at(0.5, 0.25, 40.0, 10.0, 1.1) == pytest.approx(expected, rel=1e-5)


def test_maximum_at_the_edge():
    inner = weight_at(0.5, 0.5, 50.0, 10.0, 0.7)
    edge = weight_at(1.0, 1.0, 50.0, 10.0, 0.7)
    assert edge > inner > weight_at(0, 0, 50.0, 10.0, 0.7)
    assert edge == pytest.approx(0.3 * CORNER_Q * (1 + math.log(5)), rel=1e-5)


def test_never_negative_for_short_w_rows():
    # The released code's r = h / w would give 1 + ln(0.1) < 0 here; r = long / short does not.
    gt = torch.tensor([[0.0, 0.0, 10.0, 100.0, 0.4]])
    w = ssrw_weights(torch.tensor([[1.0, 2.0]]), gt)
    assert w.item() > 0


def test_independent_of_row_form():
    centre = torch.tensor([[3.0, -4.0]])
    a = torch.tensor([[0.0, 0.0, 60.0, 12.0, 0.2]])
    b = torch.tensor([[0.0, 0.0, 12.0, 60.0, 0.2 + math.pi / 2]])
    torch.testing.assert_close(ssrw_weights(centre, a), ssrw_weights(centre, b))


def test_mu_scales_linearly():
    centre = torch.tensor([[3.0, -4.0]])
    gt = torch.tensor([[0.0, 0.0, 60.0, 12.0, 0.2]])
    torch.testing.assert_close(ssrw_weights(centre, gt, mu=0.6), 2 * ssrw_weights(centre, gt, mu=0.3))
