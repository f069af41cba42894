"""Horizontal anchors as mmdet's ``AnchorGenerator`` lays them out.

Per level, the base size is the stride; an anchor of ratio r (= h / w) and scale s has
``w = stride * s / sqrt(r)`` and ``h = stride * s * sqrt(r)``, centred on the grid point
``(x * stride, y * stride)`` (centre offset 0). Anchors are ordered ``(H, W, A)``: rows of the
feature map, then columns, then the base anchors in ratio order, so the RPN output channel
``a * 6 + k`` belongs to base anchor ``a``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


_CACHE_SIZE = 16


class AnchorGenerator:
    def __init__(
        self,
        strides: Sequence[int] = (4, 8, 16, 32, 64),
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        scales: Sequence[float] = (8.0,),
    ):
        self.strides = list(strides)
        self.ratios = list(ratios)
        self.scales = list(scales)
        # Anchors per (feature-map sizes, device): windows come in a few sizes, so this stays small.
        self._cache: dict[tuple, list[Tensor]] = {}

    @property
    def num_anchors(self) -> int:
        """Base anchors per location."""
        return len(self.ratios) * len(self.scales)

    def base_anchors(self, stride: int) -> Tensor:
        """``(A, 4)`` anchors ``x1, y1, x2, y2`` around the origin, ratio-major (mmdet's scale_major)."""
        ratios = torch.tensor(self.ratios, dtype=torch.float32)
        scales = torch.tensor(self.scales, dtype=torch.float32)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = (stride * w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (stride * h_ratios[:, None] * scales[None, :]).reshape(-1)
        return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)

    def grid_anchors(self, featmap_sizes: Sequence[tuple[int, int]], device: torch.device) -> list[Tensor]:
        """Per level, ``(H * W * A, 4)`` anchors for feature maps of the given ``(H, W)`` sizes.

        The tensors are cached and shared between calls: callers must not modify them in place.
        """
        if len(featmap_sizes) != len(self.strides):
            raise ValueError(f"{len(featmap_sizes)} feature maps for {len(self.strides)} strides")
        key = (tuple((int(h), int(w)) for h, w in featmap_sizes), str(torch.device(device)))
        if key not in self._cache:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = self._grid_anchors(featmap_sizes, device)
        return self._cache[key]

    def _grid_anchors(self, featmap_sizes: Sequence[tuple[int, int]], device: torch.device) -> list[Tensor]:
        out = []
        for (h, w), stride in zip(featmap_sizes, self.strides, strict=True):
            base = self.base_anchors(stride).to(device)
            xs = torch.arange(w, device=device, dtype=torch.float32) * stride
            ys = torch.arange(h, device=device, dtype=torch.float32) * stride
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
            out.append((shifts + base[None]).reshape(-1, 4))
        return out


def anchor_inside_flags(anchors: Tensor, image_size: tuple[int, int], allowed_border: int = 0) -> Tensor:
    """Anchors used for RPN training, as mmrotate's ``rotated_anchor_inside_flags`` selects them.

    That function reads columns 0 and 1 as a box centre, but ``OrientedRPNHead`` passes horizontal
    ``x1, y1, x2, y2`` anchors, so what the authors actually trained with keeps an anchor when its
    *top-left corner* lies within ``allowed_border`` px of the image (not its whole extent, not its
    centre). Anchors hanging over the right/bottom edge are kept; those over the left/top are not.
    A negative ``allowed_border`` keeps every anchor.
    """
    if allowed_border < 0:
        return torch.ones(anchors.shape[0], dtype=torch.bool, device=anchors.device)
    h, w = image_size
    x, y = anchors[:, 0], anchors[:, 1]
    b = allowed_border
    return (x >= -b) & (y >= -b) & (x < w + b) & (y < h + b)
