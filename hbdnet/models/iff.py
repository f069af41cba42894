"""Inter-layer feature fusion (IFF) of HBD-Net's SDFF architecture (method doc section 4).

A window at pyramid level L is fused with the feature maps of ``n`` coarser crops (levels L+1 ... L+n)
centred on it. For the window's FPN level ``l`` (0 = P2) and crop ``r`` (0 = one level coarser),
the coarse FPN level ``g = l - r - 1`` covers the window's footprint at the same original-pixel
stride as ``l``, so the footprint's sub-map has the window map's size. The matched maps are
concatenated on channels with the window's map and mixed by a 3x3 conv + ReLU (``fusion_convs[k-1]``
for ``k`` matched maps). Levels with no match pass through unchanged.

Differences from the authors' code, on purpose:
* all matched maps are accumulated (their ``ConcateFPNFea`` dropped all but the last: a shape error
  for k >= 2, section 4.4);
* everything stays in (C, H, W) layout (theirs transposed the global crops);
* the footprint is resampled with ``grid_sample`` to exactly the window map's size instead of integer
  slicing, so footprints that do not fall on the coarse grid (crops clamped at the scene border,
  windows at odd offsets) still line up; on an aligned footprint this equals slicing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FusionConv(nn.Module):
    """3x3 conv + ReLU; the ``.conv`` attribute keeps the authors' checkpoint keys (mmcv ConvModule)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv(x))


def crop_footprint(features: Tensor, rel_boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear crop of ``rel_boxes`` (B, 4: left, top, right, bottom in [0, 1] of the map) to ``size``."""
    b = features.shape[0]
    h, w = size
    dtype, device = features.dtype, features.device
    # Cell centres of the output grid, in [0, 1] of the footprint.
    ty = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
    tx = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
    rel = rel_boxes.to(dtype)
    x = rel[:, 0, None] + tx[None] * (rel[:, 2] - rel[:, 0])[:, None]  # (B, w)
    y = rel[:, 1, None] + ty[None] * (rel[:, 3] - rel[:, 1])[:, None]  # (B, h)
    grid = torch.stack(
        [(2 * x - 1)[:, None, :].expand(b, h, w), (2 * y - 1)[:, :, None].expand(b, h, w)], dim=-1
    )
    return F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class InterLayerFusion(nn.Module):
    def __init__(self, channels: int = 256, max_maps: int = 5, min_context_level: int = 1):
        super().__init__()
        # The authors keep only coarse FPN levels g with 0 < g (never the coarse P2).
        self.min_context_level = min_context_level
        self.fusion_convs = nn.ModuleList(FusionConv((k + 1) * channels, channels) for k in range(1, max_maps + 1))

    def forward(self, window_feats: list[Tensor], context_feats: list[list[Tensor]], rel_boxes: Tensor) -> list[Tensor]:
        """Fuse a batch of windows' FPN maps with their context crops' FPN maps.

        window_feats: FPN levels of the windows, each (B, C, H_l, W_l).
        context_feats: per context crop r, that crop's FPN levels, each (B, C, H_g, W_g).
        rel_boxes: (B, R, 4), window footprint inside crop r as fractions of the crop's extent
            (of the *feature map*, so a crop padded to the nominal size uses nominal fractions).
        """
        fused = []
        for level, feat in enumerate(window_feats):
            maps = [feat]
            for r, crop_levels in enumerate(context_feats):
                g = level - r - 1
                if self.min_context_level <= g < len(crop_levels):
                    maps.append(crop_footprint(crop_levels[g], rel_boxes[:, r], feat.shape[-2:]))
            k = len(maps) - 1
            fused.append(feat if k == 0 else self.fusion_convs[k - 1](torch.cat(maps, dim=1)))
        return fused
