"""Inference precision: bfloat16 autocast around the network's convolutions and matrix products only.

The detector's geometry stays float32: anchors, box decoding, proposal and final NMS (rotated IoU),
and RoIAlign's sampling coordinates. Autocast around the whole forward pass would not keep it so:
the RoI rows are cast to the features' dtype before RoIAlign (8 bits of mantissa are 4 px at 1024),
and the RPN would rank its candidates on bfloat16 scores, full of ties. So autocast is put around
modules that hold nothing but convolutions and matrix products, chosen where bfloat16 leaves the
detections unchanged (``autocast_regions``), and their outputs are cast back to float32 before
anything else reads them. Inter-layer fusion, where a model has it, runs in float32 (it samples the
coarser maps at the window's footprint).

``auto`` is bfloat16 on a CUDA device that supports it, float32 elsewhere: on a CPU, bfloat16 is
no faster without the matrix units of recent server CPUs, and float32 is the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from hbdnet.models.backbones.resnet import ResNet

Precision = Literal["auto", "float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype ``precision`` means on ``device``; ``ValueError`` for an unknown name, or
    bfloat16 asked for on a GPU without it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    bf16_gpu = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return torch.bfloat16 if bf16_gpu else torch.float32
    if precision == "bfloat16" and device.type == "cuda" and not bf16_gpu:
        raise ValueError(f"this GPU ({device}) does not support bfloat16: use --precision float32")
    return _DTYPES[precision]


def _to_float32(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() and value.dtype != torch.float32 else value
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float32(v) for v in value)
    return value


class AutocastForward:
    """A module's own ``forward`` run under autocast to ``dtype``, its outputs cast back to float32."""

    def __init__(self, forward: Callable[..., Any], device_type: str, dtype: torch.dtype):
        self.forward = forward
        self.device_type = device_type
        self.dtype = dtype

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.forward(*args, **kwargs)
        return _to_float32(out)


def autocast_regions(detector: nn.Module) -> list[nn.Module]:
    """The modules of one Oriented R-CNN that run under autocast (see the module docstring).

    * the backbone, where it is a ResNet: not EfficientNet-Lite0, whose bfloat16 features moved the
      light model's best box on NWPU val (IoU 0.83 with float32's) and its AP50 by 0.009;
    * the FPN;
    * the RoI head's two shared fully connected layers, its heavy products; its last layers (class
      logits, box deltas) are cheap and stay float32, as scores and boxes come from them.

    The RPN stays float32 as a whole: its objectness ranking picks the proposals, and with its 3 x 3
    convolution in bfloat16 a box of the default model on NWPU val moved (IoU 0.39 with float32's,
    AP50 -0.005); with its predictors in bfloat16 a box of the light model did (IoU 0.61).
    """
    regions: list[nn.Module] = [detector.backbone] if isinstance(detector.backbone, ResNet) else []
    regions += [detector.neck, *detector.roi_head.bbox_head.shared_fcs]
    return regions


def set_precision(model: nn.Module, dtype: torch.dtype, device_type: str) -> None:
    """Run ``model``'s detectors (an ``HBDNet`` or one ``OrientedRCNN``) in ``dtype`` from now on.

    float32 removes the autocast again. The weights are not converted (autocast casts them per call),
    so the state dict is unchanged.
    """
    detectors = [model] if hasattr(model, "rpn_head") else [model.local_detector, *model.global_detectors]
    for detector in detectors:
        for module in autocast_regions(detector):
            module.__dict__.pop("forward", None)  # an earlier set_precision's wrapper
            if dtype != torch.float32:
                module.forward = AutocastForward(module.forward, device_type, dtype)


def model_precision(model: nn.Module) -> torch.dtype:
    """The dtype ``set_precision`` left ``model`` in (float32 when it was never called)."""
    detector = model if hasattr(model, "rpn_head") else model.local_detector
    wrapper = detector.neck.__dict__.get("forward")  # the FPN is in every detector's regions; the backbone not
    return wrapper.dtype if isinstance(wrapper, AutocastForward) else torch.float32
