"""Augmentation of training windows: the authors' flips, and more for small training sets.

**Flips** are the authors' only augmentation (section 6.2 of the method digest).

Horizontal, vertical and diagonal (= both, a half turn) each with probability 0.25, none with
0.25. An image of width ``W`` spans ``x`` in ``[0, W]`` (pixel centres at ``+0.5``), so a horizontal
flip maps ``x -> W - x``; on a ``(cx, cy, w, h, theta)`` box that is ``cx -> W - cx`` and
``theta -> -theta`` (a mirror reverses angles), re-regularised to ``le90``. Vertical likewise with
``H``; diagonal moves only the centre (a half turn maps a rectangle onto itself).

Global crops (IFF) get the same flip as the window, each within its own ``c x c`` frame, together
with their ground truth and ``rel_box``.

**For a small set** (:class:`Augment`, switched on by ``AugmentConfig.enabled``): 90-degree turns,
scale jitter, random crops, colour/contrast jitter and blur. Every geometric transform maps the
boxes exactly: a turn and a scale are similarities, so each box's corners land on the transformed
box's corners; a crop re-cuts the ground truth with the window rules of
:func:`hbdnet.data.windows.window_targets` (clipped, ``truncated``). These transforms are for
windows without IFF context crops (they only support flips).

Random draws come from a ``torch.Generator`` passed per call, so a sample's augmentation depends
only on the seed the caller derives (e.g. from seed, epoch and index): DataLoader workers and a
resumed run draw the same.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from hbdnet.boxes.convention import obb_to_hbb, regularize_le90
from hbdnet.data.windows import GlobalCrops, WindowSample, window_targets

FlipDirection = Literal["horizontal", "vertical", "diagonal"]
DIRECTIONS: tuple[FlipDirection, ...] = ("horizontal", "vertical", "diagonal")


def _axes(direction: FlipDirection) -> tuple[bool, bool]:
    """(flip x, flip y)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"flip direction must be one of {DIRECTIONS}, got {direction!r}")
    return direction in ("horizontal", "diagonal"), direction in ("vertical", "diagonal")


def flip_boxes(boxes: Tensor, size: tuple[int, int], direction: FlipDirection) -> Tensor:
    """Flip ``(N, 5)`` boxes inside an image of ``size = (height, width)``; result in ``le90``."""
    fx, fy = _axes(direction)
    out = boxes.clone()
    height, width = size
    if fx:
        out[:, 0] = width - out[:, 0]
    if fy:
        out[:, 1] = height - out[:, 1]
    if fx != fy:  # one mirror reverses the angle; two make a half turn, which keeps it
        out[:, 4] = -out[:, 4]
    return regularize_le90(out)


def flip_image(image: Tensor, direction: FlipDirection) -> Tensor:
    """Flip a ``(..., H, W)`` image."""
    fx, fy = _axes(direction)
    dims = [d for d, f in ((-1, fx), (-2, fy)) if f]
    return image.flip(dims)


def flip_rel_boxes(rel: Tensor, direction: FlipDirection) -> Tensor:
    """Flip ``(n, 4)`` ``(left, top, right, bottom)`` fractions of a frame."""
    fx, fy = _axes(direction)
    left, top, right, bottom = rel.unbind(-1)
    if fx:
        left, right = 1 - right, 1 - left
    if fy:
        top, bottom = 1 - bottom, 1 - top
    return torch.stack([left, top, right, bottom], dim=-1)


def _flip_target(
    target: dict[str, Tensor], size: tuple[int, int], direction: FlipDirection
) -> dict[str, Tensor]:
    out = dict(target)
    out["boxes"] = flip_boxes(target["boxes"], size, direction)
    return out


def flip_sample(sample: WindowSample, direction: FlipDirection) -> WindowSample:
    """The same flip applied to the window, its boxes and its global crops; ``meta["flip"]`` records it."""
    size = (sample.image.shape[-2], sample.image.shape[-1])
    crops = sample.global_crops
    if crops is not None:
        c_size = (crops.images.shape[-2], crops.images.shape[-1])
        crops = GlobalCrops(
            images=flip_image(crops.images, direction),
            rel_boxes=flip_rel_boxes(crops.rel_boxes, direction),
            targets=[_flip_target(t, c_size, direction) for t in crops.targets],
            levels=crops.levels,
        )
    return dataclasses.replace(
        sample,
        image=flip_image(sample.image, direction),
        target=_flip_target(sample.target, size, direction),
        meta={**sample.meta, "flip": direction},
        global_crops=crops,
    )


class RandomFlip:
    """Horizontal / vertical / diagonal flip with probabilities ``probs``; no flip with the rest.

    Draws from torch's RNG (or ``generator``), so DataLoader workers, which torch seeds apart, flip
    independently.
    """

    def __init__(
        self, probs: tuple[float, float, float] = (0.25, 0.25, 0.25), generator: torch.Generator | None = None
    ) -> None:
        if len(probs) != 3 or any(p < 0 for p in probs) or sum(probs) > 1 + 1e-9:
            raise ValueError(f"probs must be three non-negative numbers summing to at most 1, got {probs}")
        self.probs = tuple(float(p) for p in probs)
        self.generator = generator

    def choose(self, generator: torch.Generator | None = None) -> FlipDirection | None:
        u = torch.rand((), generator=generator or self.generator).item()
        edge = 0.0
        for direction, p in zip(DIRECTIONS, self.probs):
            edge += p
            if u < edge:
                return direction
        return None

    def __call__(self, sample: WindowSample, generator: torch.Generator | None = None) -> WindowSample:
        direction = self.choose(generator)
        if direction is None:
            return dataclasses.replace(sample, meta={**sample.meta, "flip": None})
        return flip_sample(sample, direction)


# --------------------------------------------------------------------------------------------------
# Augmentation for small sets.


@dataclass
class AugmentConfig:
    """What :class:`Augment` does; each transform is drawn per sample with its probability."""

    enabled: bool = False
    rot90: bool = True  # a random quarter turn (0, 1, 2 or 3), with the flips: all 8 symmetries
    scale_prob: float = 0.5
    scale_range: tuple[float, float] = (0.7, 1.4)  # factor, drawn log-uniformly
    crop_prob: float = 0.3
    crop_min: float = 0.5  # a crop keeps at least this share of each side
    max_side: int = 1024  # windows larger than this after scaling are cropped to it
    iof_thr: float = 0.3  # crops keep a box when this share of it stays (the window rule)
    min_length: float = 0.0  # ... and its longer side is at least this (px)
    color_prob: float = 0.8
    brightness: float = 0.2  # +- share
    contrast: float = 0.3
    saturation: float = 0.3
    blur_prob: float = 0.2
    blur_sigma: tuple[float, float] = (0.4, 1.5)  # px

    def __post_init__(self) -> None:
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be 0 < low <= high, got {self.scale_range}")
        if not 0 < self.crop_min <= 1:
            raise ValueError(f"crop_min must be in (0, 1], got {self.crop_min}")
        for name in ("scale_prob", "crop_prob", "color_prob", "blur_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]")


def rot90_boxes(boxes: Tensor, size: tuple[int, int], k: int) -> Tensor:
    """Boxes of an image of ``size = (H, W)`` turned like ``torch.rot90(image, k, dims=(-2, -1))``.

    One such turn (counter-clockwise on screen) maps the point ``(x, y)`` to ``(y, W - x)`` in an
    image of size ``(W, H)``; a direction at angle ``theta`` goes to ``theta - pi/2``.
    """
    out = boxes.clone()
    height, width = size
    for _ in range(k % 4):
        x, y = out[:, 0].clone(), out[:, 1].clone()
        out[:, 0], out[:, 1] = y, width - x
        out[:, 4] = out[:, 4] - math.pi / 2
        height, width = width, height
    return regularize_le90(out)


def rot90_image(image: Tensor, k: int) -> Tensor:
    return torch.rot90(image, k % 4, dims=(-2, -1))


def scale_image(image: Tensor, factor: float) -> Tensor:
    """A ``(C, H, W)`` uint8 image resampled by ``factor`` (bilinear, antialiased when shrinking).

    The sampling uses ``factor`` exactly (``recompute_scale_factor=False``), so the point ``(x, y)``
    goes to ``(factor x, factor y)``; the size is ``floor(side * factor)``.
    """
    out = F.interpolate(image[None].float(), scale_factor=factor, mode="bilinear", align_corners=False,
                        antialias=factor < 1, recompute_scale_factor=False)[0]
    return out.round().clamp(0, 255).to(torch.uint8)


def scale_boxes(boxes: Tensor, factor: float) -> Tensor:
    out = boxes.clone()
    out[:, :4] *= factor
    return out


def crop_target(
    target: dict[str, Tensor], rect: tuple[float, float, float, float], iof_thr: float, min_length: float = 0.0
) -> dict[str, Tensor]:
    """The target of the crop ``rect = (x0, y0, x1, y1)``: the window rule (clip, IoF, truncated)."""
    tg = window_targets(target["boxes"], rect, iof_thr, min_length)
    out = dict(target)
    out["boxes"] = tg.boxes
    out["labels"] = target["labels"][tg.source]
    out["truncated"] = target["truncated"][tg.source] | tg.truncated
    return out


def gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of a ``(C, H, W)`` uint8 image (reflected borders)."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    c = image.shape[0]
    img = image[None].float()
    pad_w, pad_h = min(radius, img.shape[-1] - 1), min(radius, img.shape[-2] - 1)
    if pad_w < radius or pad_h < radius:  # a tiny image: no blur
        return image
    img = F.pad(img, (radius, radius, 0, 0), mode="reflect")
    img = F.conv2d(img, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    img = F.pad(img, (0, 0, radius, radius), mode="reflect")
    img = F.conv2d(img, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return img[0].round().clamp(0, 255).to(torch.uint8)


def color_jitter(image: Tensor, brightness: float, contrast: float, saturation: float) -> Tensor:
    """Brightness, contrast and saturation factors (1 = unchanged) on a ``(3, H, W)`` uint8 image."""
    x = image.float() * brightness
    mean = x.mean()
    x = (x - mean) * contrast + mean
    gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
    x = (x - gray) * saturation + gray
    return x.round().clamp(0, 255).to(torch.uint8)


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


class Augment:
    """The small-set augmentation: flip, quarter turn, scale, crop, colour, blur (in that order)."""

    def __init__(self, cfg: AugmentConfig, flip: bool = True):
        self.cfg = cfg
        self.flip = RandomFlip() if flip else None

    def __call__(self, sample: WindowSample, generator: torch.Generator | None = None) -> WindowSample:
        cfg, g = self.cfg, generator or torch.Generator().manual_seed(0)
        if self.flip is not None:
            sample = self.flip(sample, g)
        if sample.global_crops is not None:
            return sample  # IFF crops: flips only (their frame and rel_boxes are not rescaled here)
        image, target = sample.image, sample.target
        applied = []
        if cfg.rot90:
            k = int(torch.randint(4, (), generator=g))
            if k:
                target = {**target, "boxes": rot90_boxes(target["boxes"], tuple(image.shape[-2:]), k)}
                image = rot90_image(image, k)
                applied.append(f"rot90x{k}")
        if torch.rand((), generator=g).item() < cfg.scale_prob:
            lo, hi = cfg.scale_range
            factor = math.exp(_uniform(g, math.log(lo), math.log(hi)))
            if min(image.shape[-2:]) * factor >= 32:
                image = scale_image(image, factor)
                target = {**target, "boxes": scale_boxes(target["boxes"], factor)}
                applied.append(f"scale{factor:.2f}")
        h, w = image.shape[-2:]
        crop = None
        if torch.rand((), generator=g).item() < cfg.crop_prob:
            cw = round(w * _uniform(g, cfg.crop_min, 1.0))
            ch = round(h * _uniform(g, cfg.crop_min, 1.0))
            crop = (cw, ch)
        if w > cfg.max_side or h > cfg.max_side:
            crop = (min(crop[0] if crop else w, cfg.max_side), min(crop[1] if crop else h, cfg.max_side))
        if crop is not None:
            image, target = self._crop(image, target, crop, g)
            applied.append(f"crop{crop[0]}x{crop[1]}")
        elif len(target["boxes"]) and _leaves(target["boxes"], h, w):
            # Scaling floors the size: re-cut the boxes that now cross the edge by a pixel or less.
            target = crop_target(target, (0.0, 0.0, float(w), float(h)), cfg.iof_thr, cfg.min_length)
        if torch.rand((), generator=g).item() < cfg.color_prob:
            image = color_jitter(
                image,
                _uniform(g, 1 - cfg.brightness, 1 + cfg.brightness),
                _uniform(g, 1 - cfg.contrast, 1 + cfg.contrast),
                _uniform(g, 1 - cfg.saturation, 1 + cfg.saturation),
            )
            applied.append("color")
        if torch.rand((), generator=g).item() < cfg.blur_prob:
            image = gaussian_blur(image, _uniform(g, *cfg.blur_sigma))
            applied.append("blur")
        return dataclasses.replace(sample, image=image, target=target, meta={**sample.meta, "augment": applied})

    def _crop(self, image: Tensor, target: dict[str, Tensor], size: tuple[int, int], g: torch.Generator):
        h, w = image.shape[-2:]
        cw, ch = size
        best = None
        for _ in range(4):  # prefer a crop that keeps a bridge, when the window has one
            x0 = int(torch.randint(w - cw + 1, (), generator=g))
            y0 = int(torch.randint(h - ch + 1, (), generator=g))
            tg = crop_target(target, (float(x0), float(y0), float(x0 + cw), float(y0 + ch)),
                             self.cfg.iof_thr, self.cfg.min_length)
            best = (x0, y0, tg)
            if len(tg["boxes"]) or not len(target["boxes"]):
                break
        x0, y0, tg = best
        return image[:, y0:y0 + ch, x0:x0 + cw].contiguous(), tg


def _leaves(boxes: Tensor, h: int, w: int, tol: float = 1e-6) -> bool:
    hull = obb_to_hbb(boxes.double())
    return bool(((hull[:, 0] < -tol) | (hull[:, 1] < -tol) | (hull[:, 2] > w + tol) | (hull[:, 3] > h + tol)).any())
