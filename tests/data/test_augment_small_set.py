"""The small-set augmentation keeps every box exact: each transform's box mapping is checked against
the transformed corners and against the transformed pixels."""

import math

import numpy as np
import pytest
import shapely
import torch
from rasterio.features import rasterize

from hbdnet.boxes.convention import obb_to_poly, poly_to_obb, regularize_le90
from hbdnet.data.augment import (
    Augment,
    AugmentConfig,
    crop_target,
    gaussian_blur,
    rot90_boxes,
    rot90_image,
    scale_boxes,
    scale_image,
)
from hbdnet.data.windows import WindowSample


def random_le90(n: int, size=(400, 600), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h, w = size
    cx = torch.rand(n, generator=g, dtype=torch.float64) * w
    cy = torch.rand(n, generator=g, dtype=torch.float64) * h
    bh = torch.rand(n, generator=g, dtype=torch.float64) * 40 + 2
    bw = bh + 1 + torch.rand(n, generator=g, dtype=torch.float64) * 200
    t = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * math.pi
    return regularize_le90(torch.stack([cx, cy, bw, bh, t], -1))


def assert_same_rectangles(a, b, atol=1e-6):
    torch.testing.assert_close(a[:, :4], b[:, :4], atol=atol, rtol=0)
    torch.testing.assert_close(torch.cos(2 * a[:, 4]), torch.cos(2 * b[:, 4]), atol=1e-9, rtol=0)
    torch.testing.assert_close(torch.sin(2 * a[:, 4]), torch.sin(2 * b[:, 4]), atol=1e-9, rtol=0)


def rot90_points(polys: torch.Tensor, size, k: int) -> torch.Tensor:
    """A quarter turn of the image (torch.rot90 over (H, W)) moves (x, y) to (y, W - x)."""
    pts = polys.reshape(-1, 4, 2).clone()
    h, w = size
    for _ in range(k % 4):
        x, y = pts[..., 0].clone(), pts[..., 1].clone()
        pts[..., 0], pts[..., 1] = y, w - x
        h, w = w, h
    return pts.reshape(-1, 8)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_rot90_boxes_equal_the_turned_corners(k):
    b = random_le90(200)
    size = (400, 600)
    out = rot90_boxes(b, size, k)
    assert_same_rectangles(out, poly_to_obb(rot90_points(obb_to_poly(b), size, k)))
    assert (out[:, 2] >= out[:, 3]).all()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rot90_whole_image_box_maps_to_the_turned_image(k):
    h, w = 30, 50
    whole = torch.tensor([[w / 2, h / 2, float(w), float(h), 0.0]], dtype=torch.float64)
    turned = rot90_image(torch.zeros(3, h, w), k)
    th, tw = turned.shape[-2:]
    out = rot90_boxes(whole, (h, w), k)
    expected = regularize_le90(torch.tensor([[tw / 2, th / 2, float(tw), float(th), 0.0]], dtype=torch.float64))
    assert_same_rectangles(out, expected)
    # every corner of the box lands on a corner of the turned image
    corners = obb_to_poly(out).reshape(4, 2)
    image_corners = {(0.0, 0.0), (float(tw), 0.0), (0.0, float(th)), (float(tw), float(th))}
    assert {(round(float(x), 6) + 0.0, round(float(y), 6) + 0.0) for x, y in corners} == image_corners


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rot90_image_and_box_agree(k):
    h, w, x, y = 30, 50, 7, 4
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    img[:, y, x] = 255
    box = torch.tensor([[x + 0.5, y + 0.5, 1.0, 0.5, 0.0]], dtype=torch.float64)
    yy, xx = torch.nonzero(rot90_image(img, k)[0], as_tuple=True)
    out = rot90_boxes(box, (h, w), k)
    assert (out[0, 0].item(), out[0, 1].item()) == pytest.approx((xx.item() + 0.5, yy.item() + 0.5))


@pytest.mark.parametrize("factor", [0.5, 0.73, 1.0, 1.37, 2.0])
def test_scale_image_moves_points_by_the_factor(factor):
    # The brightness centroid of a smooth blob at (x0, y0) moves to factor * (x0, y0).
    h, w, x0, y0 = 90, 120, 47.3, 38.6
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    blob = 250 * torch.exp(-((xs - x0) ** 2 + (ys - y0) ** 2) / (2 * 6.0**2))
    img = blob.round().to(torch.uint8).expand(3, h, w).contiguous()
    out = scale_image(img, factor)
    assert out.shape[-2:] == (math.floor(h * factor), math.floor(w * factor))
    oy, ox = torch.meshgrid(torch.arange(out.shape[-2]) + 0.5, torch.arange(out.shape[-1]) + 0.5, indexing="ij")
    m = out[0].double()
    cx, cy = float((m * ox).sum() / m.sum()), float((m * oy).sum() / m.sum())
    box = scale_boxes(torch.tensor([[x0, y0, 10.0, 4.0, 0.3]], dtype=torch.float64), factor)
    assert (cx, cy) == pytest.approx((box[0, 0].item(), box[0, 1].item()), abs=0.05)
    torch.testing.assert_close(box[0, 2:], torch.tensor([10.0 * factor, 4.0 * factor, 0.3], dtype=torch.float64))


def test_scale_boxes_equal_the_scaled_corners():
    b = random_le90(100)
    assert_same_rectangles(scale_boxes(b, 1.7), poly_to_obb(obb_to_poly(b) * 1.7))


def test_crop_moves_inner_boxes_and_clips_cut_ones():
    boxes = torch.tensor([[100.0, 100.0, 40.0, 10.0, 0.3], [195.0, 100.0, 60.0, 10.0, 0.0]])
    target = {"boxes": boxes, "labels": torch.zeros(2, dtype=torch.int64), "truncated": torch.zeros(2, dtype=torch.bool)}
    out = crop_target(target, (50.0, 60.0, 200.0, 200.0), iof_thr=0.3)
    torch.testing.assert_close(out["boxes"][0], torch.tensor([50.0, 40.0, 40.0, 10.0, 0.3]))
    assert out["truncated"].tolist() == [False, True]
    # the cut bridge keeps its part inside the crop: x from 165 to 200 -> 115 to 150 in the crop
    torch.testing.assert_close(out["boxes"][1], torch.tensor([132.5, 40.0, 35.0, 10.0, 0.0]), atol=1e-4, rtol=0)


def test_blur_keeps_size_and_mean():
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 40, 50), generator=g, dtype=torch.uint8)
    out = gaussian_blur(img, 1.2)
    assert out.shape == img.shape and out.dtype == torch.uint8
    assert abs(out.float().mean() - img.float().mean()) < 1.0
    assert out.float().std() < img.float().std()


def draw(boxes: torch.Tensor, size, fg=240, bg=25) -> torch.Tensor:
    h, w = size
    polys = obb_to_poly(boxes.double()).numpy().reshape(-1, 4, 2)
    mask = rasterize([shapely.Polygon(p) for p in polys], out_shape=(h, w), fill=0, default_value=1).astype(bool)
    img = np.full((3, h, w), bg, np.uint8)
    img[:, mask] = fg
    return torch.from_numpy(img)


def box_mask(boxes: torch.Tensor, size, grow: float = 0.0) -> np.ndarray:
    h, w = size
    polys = [shapely.Polygon(p).buffer(grow, join_style="mitre") for p in obb_to_poly(boxes.double()).numpy().reshape(-1, 4, 2)]
    if not polys:
        return np.zeros((h, w), bool)
    return rasterize(polys, out_shape=(h, w), fill=0, default_value=1).astype(bool)


def test_augmented_boxes_still_cover_their_bridges():
    """Over many draws of every transform together, the boxes stay on the bright bridges."""
    size = (220, 300)
    boxes = torch.tensor([[90.0, 80.0, 120.0, 14.0, 0.35], [200.0, 150.0, 80.0, 12.0, -1.1]])
    sample = WindowSample(draw(boxes, size), {"boxes": boxes, "labels": torch.zeros(2, dtype=torch.int64),
                                              "truncated": torch.zeros(2, dtype=torch.bool)}, {"level": 0})
    aug = Augment(AugmentConfig(enabled=True, scale_prob=0.7, crop_prob=0.6, max_side=256, blur_prob=0.0))
    seen = set()
    for seed in range(40):
        out = aug(sample, torch.Generator().manual_seed(seed))
        seen.update(a[:4] for a in out.meta["augment"])
        img = out.image[0].numpy().astype(float)
        h, w = img.shape
        assert max(h, w) <= 256
        bright = img > 130
        inside = box_mask(out.target["boxes"], (h, w), grow=-1.0)
        if inside.any():
            assert bright[inside].mean() > 0.97, (seed, out.meta)
        # no bright pixel outside the (slightly grown) boxes: nothing visible is unlabelled,
        # except bits of a bridge cut away by a crop below the IoF rule
        outside = ~box_mask(out.target["boxes"], (h, w), grow=2.0)
        if not out.target["truncated"].any() and len(out.target["boxes"]) == 2:
            assert bright[outside].mean() < 0.001, (seed, out.meta)
    assert {"rot9", "scal", "crop", "colo"} <= seen
