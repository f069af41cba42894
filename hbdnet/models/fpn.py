"""Feature pyramid network as mmdet's ``FPN`` (no extra convs): P2..P5 from C2..C5, P6 by pooling."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class ConvModule(nn.Module):
    """A conv with bias and an optional ReLU, named like mmcv's ``ConvModule`` (weights under ``.conv``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, relu: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.relu = relu
        nn.init.xavier_uniform_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return F.relu(x) if self.relu else x


class FPN(nn.Module):
    """Top-down pyramid: 1x1 laterals, nearest upsampling by size, 3x3 output convs.

    Returns ``num_outs`` maps; the ones beyond the inputs are ``max_pool2d(kernel 1, stride 2)`` of the
    previous output (mmdet's behaviour without extra convs), so with 4 inputs and ``num_outs=5`` the
    outputs are P2..P6 at strides 4..64.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, num_outs: int = 5):
        super().__init__()
        if num_outs < len(in_channels):
            raise ValueError("num_outs must be at least the number of inputs")
        self.num_outs = num_outs
        self.out_channels = out_channels
        self.lateral_convs = nn.ModuleList(ConvModule(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(ConvModule(out_channels, out_channels, 3) for _ in in_channels)

    def forward(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=True)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return outs
