"""ResNet (bottleneck, ``style='pytorch'``) as mmdet builds it for Oriented R-CNN.

Module names are torchvision's (``conv1``, ``bn1``, ``layer1..4`` with ``conv{1,2,3}``, ``bn{1,2,3}``,
``downsample.{0,1}``), which are also mmdet's, so torchvision ImageNet weights and the authors'
checkpoints load key for key. The stride of a stage sits on the 3x3 conv (``style='pytorch'``).

Training behaviour follows the authors' config: ``frozen_stages=1`` keeps the stem and ``layer1``
frozen (no gradients, BatchNorm in eval mode) and ``norm_eval=True`` keeps every BatchNorm's running
statistics fixed while the affine parameters of the unfrozen stages still train.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from hbdnet.models.backbones.freezing import apply_freezing


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Bottleneck ResNet returning ``[C2, C3, C4, C5]`` (strides 4, 8, 16, 32).

    Args:
        blocks: bottleneck blocks per stage ([3, 4, 6, 3] is ResNet-50).
        base_width: width of the stem and of the first stage's bottleneck (64 for ResNet-50);
            stage ``i`` uses ``base_width * 2**i`` and outputs four times that.
        frozen_stages: -1 freezes nothing, 0 the stem, k the stem and ``layer1..k``.
        norm_eval: keep all BatchNorm layers in eval mode during training.
        zero_init_residual: zero the last BatchNorm of each block at random init (mmdet's default;
            irrelevant once ImageNet weights are loaded).
    """

    def __init__(
        self,
        blocks: Sequence[int] = (3, 4, 6, 3),
        base_width: int = 64,
        frozen_stages: int = 1,
        norm_eval: bool = True,
        zero_init_residual: bool = True,
    ):
        super().__init__()
        if len(blocks) != 4:
            raise ValueError(f"expected 4 stages, got {len(blocks)}")
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.conv1 = nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = base_width
        self.out_channels: list[int] = []
        for i, n in enumerate(blocks):
            width = base_width * 2**i
            layer = self._make_layer(in_channels, width, n, stride=1 if i == 0 else 2)
            self.add_module(f"layer{i + 1}", layer)
            in_channels = width * Bottleneck.expansion
            self.out_channels.append(in_channels)
        self._init_weights(zero_init_residual)
        apply_freezing(self, self._frozen_modules(), self.norm_eval, self.training)

    @staticmethod
    def _make_layer(in_channels: int, width: int, n: int, stride: int) -> nn.Sequential:
        out_channels = width * Bottleneck.expansion
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        layers = [Bottleneck(in_channels, width, stride, downsample)]
        layers += [Bottleneck(out_channels, width) for _ in range(n - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        mods: list[nn.Module] = [self.conv1, self.bn1]
        mods += [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]
        return mods

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        apply_freezing(self, self._frozen_modules(), self.norm_eval, mode)
        return self

    def conv_bn_pairs(self) -> list[tuple[nn.Module, str, str]]:
        """Every BatchNorm with the conv that feeds it: ``(parent, conv name, BN name)``, for folding."""
        pairs: list[tuple[nn.Module, str, str]] = [(self, "conv1", "bn1")]
        for i in range(1, 5):
            for block in getattr(self, f"layer{i}"):
                pairs += [(block, f"conv{k}", f"bn{k}") for k in (1, 2, 3)]
                if block.downsample is not None:
                    pairs.append((block.downsample, "0", "1"))
        return pairs

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return outs

    def load_pretrained(self, path: str | Path) -> None:
        """Load torchvision-layout ImageNet weights from a local file (the classifier ``fc`` is dropped).

        Raises if any backbone tensor is missing or has the wrong shape, so a wrong file cannot
        silently leave layers at random init.
        """
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
        if "state_dict" in state:
            state = state["state_dict"]
        state = {k.removeprefix("module."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: missing keys {missing}, unexpected keys {unexpected}")


def resnet50(frozen_stages: int = 1, norm_eval: bool = True) -> ResNet:
    return ResNet((3, 4, 6, 3), 64, frozen_stages=frozen_stages, norm_eval=norm_eval)


def resnet_tiny(frozen_stages: int = 1, norm_eval: bool = True) -> ResNet:
    """A ResNet with one narrow block per stage (channels 32/64/128/256), for fast tests."""
    return ResNet((1, 1, 1, 1), 8, frozen_stages=frozen_stages, norm_eval=norm_eval)
