"""Rotated RoIAlign against a loop-by-loop reading of mmcv's kernel, closed forms and autograd."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hbdnet.boxes import roi_align as roi_align_module
from hbdnet.boxes.convention import obb_to_poly
from hbdnet.boxes.roi_align import RoIAlignRotated, roi_align_rotated


def _ref_bilinear(fmap: np.ndarray, y: float, x: float) -> np.ndarray:
    """mmcv's ``bilinear_interpolate`` for one point of a ``(C, H, W)`` map, written out."""
    _, height, width = fmap.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(fmap.shape[0])
    y = max(y, 0.0)
    x = max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * fmap[:, y_low, x_low]
        + hy * lx * fmap[:, y_low, x_high]
        + ly * hx * fmap[:, y_high, x_low]
        + ly * lx * fmap[:, y_high, x_high]
    )


def _ref_roi_align_rotated(
    features: np.ndarray,
    rois: np.ndarray,
    out_hw: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    clockwise: bool,
) -> np.ndarray:
    """mmcv's ``roi_align_rotated`` forward with explicit loops over RoIs, bins and samples."""
    oh, ow = out_hw
    out = np.zeros((rois.shape[0], features.shape[1], oh, ow))
    for k, (b, cx, cy, w, h, theta) in enumerate(rois.tolist()):
        offset = 0.5 if aligned else 0.0
        cx, cy = cx * spatial_scale - offset, cy * spatial_scale - offset
        w, h = w * spatial_scale, h * spatial_scale
        if not aligned:
            w, h = max(w, 1.0), max(h, 1.0)
        if clockwise:
            theta = -theta
        cos, sin = math.cos(theta), math.sin(theta)
        bin_h, bin_w = h / oh, w / ow
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(h / oh)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(w / ow)
        count = max(grid_h * grid_w, 1)
        fmap = features[int(b)]
        for ph in range(oh):
            for pw in range(ow):
                acc = np.zeros(features.shape[1])
                for iy in range(grid_h):
                    yy = -h / 2.0 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        xx = -w / 2.0 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        y = yy * cos - xx * sin + cy
                        x = yy * sin + xx * cos + cx
                        acc += _ref_bilinear(fmap, y, x)
                out[k, :, ph, pw] = acc / count
    return out


def _random_rois(
    rng: np.random.Generator, n: int, batch: int, height: int, width: int, spatial_scale: float
) -> np.ndarray:
    """RoIs in image pixels for a feature map of ``height x width`` at ``spatial_scale``.

    Drawn in feature units (then divided by the scale): centres in and around the map, a few far
    outside, sizes from zero and sub-cell to larger than the map, all angles.
    """
    cx = rng.uniform(-3.0, width + 3.0, n)
    cy = rng.uniform(-3.0, height + 3.0, n)
    cx[:2] = [-9.0, width + 9.0]  # wholly outside
    size_kind = rng.integers(0, 3, (n, 2))
    tiny = rng.uniform(0.0, 1.0, (n, 2))
    small = rng.uniform(1.0, 6.0, (n, 2))
    large = rng.uniform(6.0, 1.5 * max(height, width), (n, 2))
    sizes = np.where(size_kind == 0, tiny, np.where(size_kind == 1, small, large))
    sizes[2] = [0.0, 0.0]
    sizes[3] = [0.0, 4.0]
    theta = rng.uniform(-math.pi, math.pi, n)
    theta[4] = 0.0
    b = rng.integers(0, batch, n).astype(float)
    rois = np.stack([b, cx, cy, sizes[:, 0], sizes[:, 1], theta], axis=1)
    rois[:, 1:5] /= spatial_scale
    return rois


@pytest.mark.parametrize("spatial_scale", [1.0, 1 / 4, 1 / 8, 1 / 16, 1 / 32])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("clockwise", [True, False])
def test_matches_reference_loops(spatial_scale, sampling_ratio, aligned, clockwise):
    rng = np.random.default_rng([int(1 / spatial_scale), sampling_ratio, aligned, clockwise])
    height, width = 9, 11
    features = rng.normal(size=(2, 3, height, width))
    rois = _random_rois(rng, 10, 2, height, width, spatial_scale)
    expected = _ref_roi_align_rotated(
        features, rois, (7, 6), spatial_scale, sampling_ratio, aligned, clockwise
    )

    got = roi_align_rotated(
        torch.from_numpy(features),
        torch.from_numpy(rois),
        (7, 6),
        spatial_scale,
        sampling_ratio,
        aligned,
        clockwise,
    )
    assert got.shape == (10, 3, 7, 6)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-10)

    got32 = roi_align_rotated(
        torch.from_numpy(features).float(),
        torch.from_numpy(rois).float(),
        (7, 6),
        spatial_scale,
        sampling_ratio,
        aligned,
        clockwise,
    )
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), expected, rtol=0, atol=1e-5)


def _probe(fmap: torch.Tensor, x: float, y: float) -> float:
    """Value RoIAlign reads at feature coordinate (x, y): a zero-size RoI sampled once (aligned)."""
    roi = torch.tensor([[0.0, x + 0.5, y + 0.5, 0.0, 0.0, 0.0]], dtype=fmap.dtype)
    return roi_align_rotated(fmap, roi, 1, 1.0, 1, aligned=True).item()


def test_border_rules_follow_mmcv_not_zero_padding():
    height, width = 4, 5
    fmap = torch.arange(height * width, dtype=torch.float64).reshape(1, 1, height, width) + 1.0
    f = fmap[0, 0]
    # Inside: plain bilinear interpolation.
    inside = ((f[2, 1] + f[3, 1]) * 0.75 + (f[2, 2] + f[3, 2]) * 0.25) / 2
    assert _probe(fmap, 1.25, 2.5) == pytest.approx(inside.item())
    # Up to one cell before the first index: clamped to the edge pixel at full weight.
    assert _probe(fmap, -0.5, 1.0) == pytest.approx(f[1, 0].item())
    assert _probe(fmap, -1.0, -1.0) == pytest.approx(f[0, 0].item())
    assert _probe(fmap, 2.0, -0.75) == pytest.approx(f[0, 2].item())
    # Past the last index up to the map size: the last row/column at full weight.
    last_two = (f[1, width - 2] + f[1, width - 1]) / 2
    assert _probe(fmap, width - 1.5, 1.0) == pytest.approx(last_two.item())
    assert _probe(fmap, width - 0.5, 1.0) == pytest.approx(f[1, width - 1].item())
    assert _probe(fmap, float(width), 1.0) == pytest.approx(f[1, width - 1].item())
    assert _probe(fmap, 1.0, float(height)) == pytest.approx(f[height - 1, 1].item())
    # Beyond those bands: zero.
    assert _probe(fmap, -1.01, 1.0) == 0.0
    assert _probe(fmap, 1.0, -1.01) == 0.0
    assert _probe(fmap, width + 0.01, 1.0) == 0.0
    assert _probe(fmap, 1.0, height + 0.01) == 0.0


@pytest.mark.parametrize("spatial_scale", [1.0, 1 / 4, 1 / 16])
@pytest.mark.parametrize("aligned", [True, False])
def test_bins_tile_the_oriented_box_of_our_convention(spatial_scale, aligned):
    """With clockwise=True, bin (row, col) is read at the matching point of obb_to_poly's rectangle.

    Channels 0 and 1 hold each feature cell's image x and y (a linear ramp; under ``aligned`` cell
    ``j`` covers image ``[j, j+1) / scale`` so its centre is ``(j + 0.5) / scale``). Bilinear
    interpolation of a linear function is exact and the samples of a bin are symmetric about its
    centre, so each output is the image position of its bin centre, here computed from the corners.
    """
    height, width = 64, 72
    offset = 0.5 if aligned else 0.0
    jj, ii = torch.meshgrid(
        torch.arange(width, dtype=torch.float64), torch.arange(height, dtype=torch.float64), indexing="xy"
    )
    fmap = torch.stack([(jj + offset) / spatial_scale, (ii + offset) / spatial_scale])[None]
    # Boxes well inside the map (feature units), then to image pixels.
    boxes = torch.tensor(
        [
            [30.0, 28.0, 30.0, 10.0, 0.0],
            [36.0, 30.0, 40.0, 12.0, 0.5],
            [34.0, 33.0, 25.0, 18.0, -1.2],
            [40.0, 30.0, 6.0, 30.0, 2.8],
            [31.0, 32.0, 20.0, 3.0, math.pi / 2],
        ],
        dtype=torch.float64,
    )
    boxes[:, :4] /= spatial_scale
    rois = torch.cat([torch.zeros(len(boxes), 1, dtype=torch.float64), boxes], dim=1)
    oh, ow = 5, 7
    pooled = roi_align_rotated(fmap, rois, (oh, ow), spatial_scale, 2, aligned=aligned, clockwise=True)

    corners = obb_to_poly(boxes).reshape(-1, 4, 2)
    p1, p2, p4 = corners[:, 0], corners[:, 1], corners[:, 3]
    col = (torch.arange(ow, dtype=torch.float64) + 0.5) / ow
    row = (torch.arange(oh, dtype=torch.float64) + 0.5) / oh
    # (K, oh, ow, 2): from corner 1, along edge 1->2 by column and along edge 1->4 by row.
    expected = (
        p1[:, None, None, :]
        + col[None, None, :, None] * (p2 - p1)[:, None, None, :]
        + row[None, :, None, None] * (p4 - p1)[:, None, None, :]
    )
    torch.testing.assert_close(pooled.permute(0, 2, 3, 1), expected, rtol=0, atol=1e-9)


def test_clockwise_false_is_the_mirrored_angle():
    rng = np.random.default_rng(3)
    features = torch.from_numpy(rng.normal(size=(1, 4, 12, 12)))
    rois = torch.from_numpy(_random_rois(rng, 8, 1, 12, 12, 0.25))
    mirrored = rois.clone()
    mirrored[:, 5] = -mirrored[:, 5]
    a = roi_align_rotated(features, rois, 7, 0.25, 2, clockwise=True)
    b = roi_align_rotated(features, mirrored, 7, 0.25, 2, clockwise=False)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert not torch.allclose(a, roi_align_rotated(features, rois, 7, 0.25, 2, clockwise=False))


def test_chunking_does_not_change_results(monkeypatch):
    rng = np.random.default_rng(5)
    features = torch.from_numpy(rng.normal(size=(2, 3, 10, 10)))
    rois = torch.from_numpy(_random_rois(rng, 9, 2, 10, 10, 0.5))
    whole_fixed = roi_align_rotated(features, rois, 7, 0.5, 2)
    whole_adaptive = roi_align_rotated(features, rois, 7, 0.5, 0)
    # Room for a single RoI of the 2x2 grid per call.
    monkeypatch.setattr(roi_align_module, "_MAX_INDICES_PER_CHUNK", 7 * 7 * 4 * 4)
    torch.testing.assert_close(roi_align_rotated(features, rois, 7, 0.5, 2), whole_fixed, rtol=0, atol=0)
    torch.testing.assert_close(roi_align_rotated(features, rois, 7, 0.5, 0), whole_adaptive, rtol=0, atol=0)


@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_gradient_to_features(sampling_ratio):
    rng = np.random.default_rng(11)
    features = torch.from_numpy(rng.normal(size=(2, 2, 6, 5))).requires_grad_(True)
    rois = torch.tensor(
        [
            [0, 10.3, 8.1, 9.0, 5.5, 0.4],
            [1, 3.7, 20.2, 14.0, 3.0, -2.0],
            [1, -1.0, 1.5, 6.0, 6.0, 1.0],  # partly off the map
            [0, 19.0, 23.0, 3.0, 1.0, 0.0],  # reaches the last row and column
        ],
        dtype=torch.float64,
    )

    def op(f):
        return roi_align_rotated(f, rois, (3, 2), 0.25, sampling_ratio, aligned=True, clockwise=True)

    assert torch.autograd.gradcheck(op, (features,))

    # The op is linear in the features, so its gradient is the adjoint of the reference:
    # <d/df <g, op(f)>, f'> = <g, ref(f')> for any f'.
    cotangent = torch.from_numpy(rng.normal(size=(4, 2, 3, 2)))
    (grad,) = torch.autograd.grad(op(features), features, cotangent)
    assert grad.abs().sum() > 0
    for _ in range(3):
        probe = rng.normal(size=(2, 2, 6, 5))
        ref = _ref_roi_align_rotated(probe, rois.numpy(), (3, 2), 0.25, sampling_ratio, True, True)
        assert (grad.numpy() * probe).sum() == pytest.approx((cotangent.numpy() * ref).sum(), abs=1e-10)


def test_zero_rois_keep_shape_and_graph():
    features = torch.randn(2, 3, 8, 8, requires_grad=True)
    for ratio in (2, 0):
        out = roi_align_rotated(features, torch.zeros(0, 6), 7, 0.25, ratio)
        assert out.shape == (0, 3, 7, 7)
        out.sum().backward()
        assert features.grad is not None and features.grad.abs().sum() == 0


def test_rejects_bad_shapes():
    with pytest.raises(ValueError):
        roi_align_rotated(torch.zeros(1, 2, 4, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError):
        roi_align_rotated(torch.zeros(2, 4, 4), torch.zeros(3, 6))


def test_module_has_mmcv_defaults_and_wraps_function():
    m = RoIAlignRotated(7, 0.25)
    settings = (m.output_size, m.spatial_scale, m.sampling_ratio, m.aligned, m.clockwise)
    assert settings == ((7, 7), 0.25, 0, True, False)
    rng = np.random.default_rng(2)
    features = torch.from_numpy(rng.normal(size=(1, 2, 10, 10)))
    rois = torch.from_numpy(_random_rois(rng, 5, 1, 10, 10, 0.25))
    hbd = RoIAlignRotated((7, 5), 0.25, sampling_ratio=2, clockwise=True)
    expected = roi_align_rotated(features, rois, (7, 5), 0.25, 2, True, True)
    torch.testing.assert_close(hbd(features, rois), expected, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_cuda_matches_cpu(sampling_ratio):
    rng = np.random.default_rng(7)
    features = torch.from_numpy(rng.normal(size=(2, 16, 20, 24))).float()
    rois = torch.from_numpy(_random_rois(rng, 64, 2, 20, 24, 1 / 8)).float()
    cpu = roi_align_rotated(features, rois, 7, 1 / 8, sampling_ratio)
    features_gpu = features.cuda().requires_grad_(True)
    gpu = roi_align_rotated(features_gpu, rois.cuda(), 7, 1 / 8, sampling_ratio)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-5)
    gpu.sum().backward()
    features.requires_grad_(True)
    roi_align_rotated(features, rois, 7, 1 / 8, sampling_ratio).sum().backward()
    torch.testing.assert_close(features_gpu.grad.cpu(), features.grad, rtol=0, atol=1e-4)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("clockwise", [True, False])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_matches_mmcv_when_available(aligned, clockwise, sampling_ratio):
    mmcv_ops = pytest.importorskip("mmcv.ops", reason="mmcv with compiled ops is not installed")
    rng = np.random.default_rng(13)
    features = torch.from_numpy(rng.normal(size=(2, 4, 16, 18))).float()
    rois = torch.from_numpy(_random_rois(rng, 32, 2, 16, 18, 1 / 4)).float()
    # mmcv's CPU kernel asserts non-negative sizes, which these are.
    theirs = mmcv_ops.RoIAlignRotated(7, 1 / 4, sampling_ratio, aligned, clockwise)(features, rois)
    ours = RoIAlignRotated(7, 1 / 4, sampling_ratio, aligned, clockwise)(features, rois)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
