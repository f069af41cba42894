"""The authors' only augmentation: random flips (section 6.2 of the method digest).

Horizontal, vertical and diagonal (= both, a half turn) each with probability 0.25, none with
0.25. An image of width ``W`` spans ``x`` in ``[0, W]`` (pixel centres at ``+0.5``), so a horizontal
flip maps ``x -> W - x``; on a ``(cx, cy, w, h, theta)`` box that is ``cx -> W - cx`` and
``theta -> -theta`` (a mirror reverses angles), re-regularised to ``le90``. Vertical likewise with
``H``; diagonal moves only the centre (a half turn maps a rectangle onto itself).

Global crops (IFF) get the same flip as the window, each within its own ``c x c`` frame, together
with their ground truth and ``rel_box``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import Tensor

from hbdnet.boxes.convention import regularize_le90
from hbdnet.data.windows import GlobalCrops, WindowSample

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

    def choose(self) -> FlipDirection | None:
        u = torch.rand((), generator=self.generator).item()
        edge = 0.0
        for direction, p in zip(DIRECTIONS, self.probs):
            edge += p
            if u < edge:
                return direction
        return None

    def __call__(self, sample: WindowSample) -> WindowSample:
        direction = self.choose()
        if direction is None:
            return dataclasses.replace(sample, meta={**sample.meta, "flip": None})
        return flip_sample(sample, direction)
