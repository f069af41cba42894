import math

import pytest
import torch

from hbdnet.boxes.convention import obb_to_poly, poly_to_obb, regularize_le90
from hbdnet.data.augment import RandomFlip, flip_boxes, flip_image, flip_rel_boxes, flip_sample
from hbdnet.data.windows import GlobalCrops, WindowSample

DIRECTIONS = ["horizontal", "vertical", "diagonal"]


def random_le90(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cx = torch.rand(n, generator=g, dtype=torch.float64) * 600
    cy = torch.rand(n, generator=g, dtype=torch.float64) * 400
    h = torch.rand(n, generator=g, dtype=torch.float64) * 40 + 2
    w = h + 1 + torch.rand(n, generator=g, dtype=torch.float64) * 200  # never square
    t = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * math.pi
    return regularize_le90(torch.stack([cx, cy, w, h, t], -1))


def flip_points(polys: torch.Tensor, size, direction) -> torch.Tensor:
    height, width = size
    pts = polys.reshape(-1, 4, 2).clone()
    if direction in ("horizontal", "diagonal"):
        pts[..., 0] = width - pts[..., 0]
    if direction in ("vertical", "diagonal"):
        pts[..., 1] = height - pts[..., 1]
    return pts.reshape(-1, 8)


def assert_same_rectangles(a: torch.Tensor, b: torch.Tensor):
    torch.testing.assert_close(a[:, :4], b[:, :4], atol=1e-6, rtol=0)
    # Angles agree modulo pi (the le90 seam at -pi/2 may put them on either side).
    torch.testing.assert_close(torch.cos(2 * a[:, 4]), torch.cos(2 * b[:, 4]), atol=1e-9, rtol=0)
    torch.testing.assert_close(torch.sin(2 * a[:, 4]), torch.sin(2 * b[:, 4]), atol=1e-9, rtol=0)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_box_flip_equals_refitting_the_flipped_corners(direction):
    b = random_le90(200)
    size = (400, 600)
    flipped = flip_boxes(b, size, direction)
    refit = poly_to_obb(flip_points(obb_to_poly(b), size, direction))
    assert_same_rectangles(flipped, refit)
    assert (flipped[:, 2] >= flipped[:, 3]).all()
    assert ((flipped[:, 4] >= -math.pi / 2) & (flipped[:, 4] < math.pi / 2)).all()


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_flip_twice_is_identity(direction):
    b = random_le90(50, seed=1)
    assert_same_rectangles(flip_boxes(flip_boxes(b, (400, 600), direction), (400, 600), direction), b)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_image_and_box_flip_agree(direction):
    # A lit pixel at (x, y) has its centre at (x + 0.5, y + 0.5); a tiny box there must follow it.
    h, w, x, y = 30, 50, 7, 4
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    img[:, y, x] = 255
    box = torch.tensor([[x + 0.5, y + 0.5, 1.0, 0.5, 0.0]], dtype=torch.float64)
    out_img = flip_image(img, direction)
    yy, xx = torch.nonzero(out_img[0], as_tuple=True)
    out_box = flip_boxes(box, (h, w), direction)
    assert (out_box[0, 0].item(), out_box[0, 1].item()) == (xx.item() + 0.5, yy.item() + 0.5)


def test_rel_box_flip():
    rel = torch.tensor([[0.1, 0.2, 0.4, 0.6]])
    torch.testing.assert_close(flip_rel_boxes(rel, "horizontal"), torch.tensor([[0.6, 0.2, 0.9, 0.6]]))
    torch.testing.assert_close(flip_rel_boxes(rel, "vertical"), torch.tensor([[0.1, 0.4, 0.4, 0.8]]))
    torch.testing.assert_close(flip_rel_boxes(rel, "diagonal"), torch.tensor([[0.6, 0.4, 0.9, 0.8]]))


def make_sample() -> WindowSample:
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 40, 60), generator=g, dtype=torch.uint8)
    crops = GlobalCrops(
        images=torch.randint(0, 256, (2, 3, 64, 64), generator=g, dtype=torch.uint8),
        rel_boxes=torch.tensor([[0.25, 0.25, 0.75, 0.75], [0.0, 0.1, 0.25, 0.35]]),
        targets=[{"boxes": torch.tensor([[10.0, 20.0, 30.0, 4.0, 0.3]]), "labels": torch.zeros(1, dtype=torch.int64),
                  "truncated": torch.zeros(1, dtype=torch.bool)}] * 2,
        levels=(1, 2),
    )
    target = {"boxes": torch.tensor([[20.0, 10.0, 30.0, 6.0, 0.4]]), "labels": torch.zeros(1, dtype=torch.int64),
              "truncated": torch.tensor([True])}
    return WindowSample(image, target, {"level": 0}, crops)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_sample_flip_is_consistent(direction):
    s = make_sample()
    out = flip_sample(s, direction)
    assert out.meta["flip"] == direction and "flip" not in s.meta
    torch.testing.assert_close(out.image, flip_image(s.image, direction))
    torch.testing.assert_close(out.target["boxes"], flip_boxes(s.target["boxes"], (40, 60), direction))
    assert torch.equal(out.target["truncated"], s.target["truncated"])
    torch.testing.assert_close(out.global_crops.images, flip_image(s.global_crops.images, direction))
    torch.testing.assert_close(out.global_crops.rel_boxes, flip_rel_boxes(s.global_crops.rel_boxes, direction))
    for a, b in zip(out.global_crops.targets, s.global_crops.targets):
        torch.testing.assert_close(a["boxes"], flip_boxes(b["boxes"], (64, 64), direction))
    # The window footprint in the crop moves with the crop's pixels.
    if direction == "horizontal":
        torch.testing.assert_close(out.global_crops.rel_boxes[1], torch.tensor([0.75, 0.1, 1.0, 0.35]))


def test_random_flip_frequencies():
    flip = RandomFlip(generator=torch.Generator().manual_seed(0))
    counts = {d: 0 for d in [*DIRECTIONS, None]}
    for _ in range(4000):
        counts[flip.choose()] += 1
    for d, n in counts.items():
        assert abs(n / 4000 - 0.25) < 0.03, (d, n)
    s = make_sample()
    for _ in range(8):
        out = flip(s)
        if out.meta["flip"] is None:
            assert torch.equal(out.image, s.image)
        else:
            assert torch.equal(out.image, flip_image(s.image, out.meta["flip"]))
    with pytest.raises(ValueError):
        RandomFlip((0.5, 0.5, 0.5))
