"""The inference-only form of a trained model: BatchNorm folded into its convs, feature maps channels_last.

Both rewrites change only float rounding. The backbones' BatchNorm layers always use their running
statistics (``norm_eval``, as the authors trained), so at inference each is an affine map per channel
right after a bias-free conv, and ``scale * (conv(x) - mean) + beta`` is the conv with weights
``w * scale`` and bias ``beta - mean * scale``: one pass over each activation map fewer. channels_last
(NHWC) is the layout the CPU convolution kernels work in, so NCHW maps are not reordered before and
after every conv, and the RPN head's and RoIAlign's channel-last views of the maps become free.

The result is for inference only: its BatchNorm layers are gone, so it cannot be trained further or
saved as a checkpoint in the authors' layout.
"""

from __future__ import annotations

import torch
from torch import nn

from hbdnet.models.backbones.efficientnet_lite import EfficientNetLite0
from hbdnet.models.backbones.resnet import ResNet

FOLDABLE = (ResNet, EfficientNetLite0)


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Make ``conv`` compute ``bn(conv(x))`` with ``bn``'s running statistics (in place; float64 arithmetic)."""
    with torch.no_grad():
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        folded_bias = bn.bias.double() + (bias - bn.running_mean.double()) * scale
        conv.weight.copy_(conv.weight.double() * scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter(folded_bias.to(conv.weight.dtype), requires_grad=False)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every backbone BatchNorm of ``model`` into its conv and replace it by ``nn.Identity``.

    Returns the number folded. Only the backbones listed in ``FOLDABLE`` are touched (they name each
    BN's conv); any other BatchNorm stays as it is.
    """
    count = 0
    for module in list(model.modules()):
        if not isinstance(module, FOLDABLE):
            continue
        for parent, conv_name, bn_name in module.conv_bn_pairs():
            bn = getattr(parent, bn_name)
            if not isinstance(bn, nn.BatchNorm2d):
                continue  # folded already
            fold_conv_bn(getattr(parent, conv_name), bn)
            setattr(parent, bn_name, nn.Identity())
            count += 1
    return count


def prepare_for_inference(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """``model`` in eval mode, BatchNorm folded and (by default) its weights channels_last, in place."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    fold_batchnorm(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def inference_form(model: nn.Module, device: torch.device) -> nn.Module:
    """The model as the engine runs it on ``device`` (in place). On the CPU: BatchNorm folded and
    channels_last, measured faster there (``tools/bench_window.py``); on a GPU the model as loaded,
    whose reduced-precision path (``hbdnet.precision``) was validated with its BatchNorm layers."""
    if device.type != "cpu":
        return model.eval()
    return prepare_for_inference(model, channels_last=True)
