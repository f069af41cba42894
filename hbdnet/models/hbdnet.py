"""HBD-Net: the SDFF detector set over the dynamic image pyramid.

A *local* Oriented R-CNN runs on the full-resolution level (level 0), *global* detector(s) on the
coarser levels: one shared by all coarse levels (the authors' released model) or one per level (the
paper's design, checkpoint keys ``*_d2 ... *_d16``). With inter-layer feature fusion (IFF) on, a
level-0 window's FPN maps are fused with those of the co-located crops of the next coarser levels
(computed by the global detector) before the local heads run, in training and in inference alike.

The pyramid and the windows themselves are planned by ``hbdnet.pyramid``; this module only sees
batches of windows of one level at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hbdnet.models.build import ModelConfig, build_oriented_rcnn
from hbdnet.models.iff import InterLayerFusion
from hbdnet.models.oriented_rcnn import Detections, OrientedRCNN, Targets


def _global_default() -> ModelConfig:
    return ModelConfig(finest_scale=56.0, use_ssrw=True)


@dataclass
class HBDNetConfig:
    local: ModelConfig = field(default_factory=ModelConfig)
    global_detector: ModelConfig = field(default_factory=_global_default)
    # "shared": one global detector for every coarse level (released model); "per_level": one each.
    global_mode: Literal["shared", "per_level"] = "shared"
    # With per_level detectors: levels 1..num_global_levels get their own; deeper levels use the last.
    num_global_levels: int = 4
    use_iff: bool = False
    iff_context_levels: int = 2  # the authors fuse with the x2 and x4 crops
    window: int = 1024
    overlap: int = 200


@dataclass
class WindowContext:
    """The coarser crops around a batch of windows, for IFF.

    images[r]: the r-th coarser crop of every window (list of B ``(3, h, w)`` RGB 0-255 tensors);
    rel_boxes: ``(B, R, 4)`` window footprint in crop r, as fractions of the nominal crop size;
    targets[r]: optional per-window targets for crop r (training the global branch on them).
    """

    images: list[list[Tensor]]
    rel_boxes: Tensor
    targets: list[Targets] | None = None


class HBDNet(nn.Module):
    def __init__(self, cfg: HBDNetConfig):
        super().__init__()
        self.cfg = cfg
        self.local_detector = build_oriented_rcnn(cfg.local)
        n_global = 1 if cfg.global_mode == "shared" else cfg.num_global_levels
        self.global_detectors = nn.ModuleList(build_oriented_rcnn(cfg.global_detector) for _ in range(n_global))
        self.fusion = InterLayerFusion(cfg.local.fpn_channels) if cfg.use_iff else None

    def detector_for_level(self, level: int) -> OrientedRCNN:
        if level == 0:
            return self.local_detector
        return self.global_detectors[min(level, len(self.global_detectors)) - 1]

    def forward(
        self,
        images: Tensor | list[Tensor],
        level: int,
        targets: Targets | None = None,
        context: WindowContext | None = None,
    ) -> dict[str, Tensor] | Detections:
        """Run the detector of ``level`` on a batch of that level's windows (RGB 0-255).

        Training (``targets`` given) returns the losses; with IFF and context targets, the global
        detector's losses on the context crops are added as ``loss_*_global``.
        """
        detector = self.detector_for_level(level)
        batch, sizes = detector.preprocess(images)
        if targets is None and self.fusion is None:
            features, rpn_outputs = detector.detect_features(batch)
            return detector.forward_heads(features, sizes, rpn_outputs=rpn_outputs)
        features = detector.extract_features(batch)
        extra_losses: dict[str, Tensor] = {}
        if self.fusion is not None and level == 0:
            if context is None:
                raise ValueError("this HBD-Net fuses features across levels (use_iff): pass the context crops")
            context_feats = []
            for r, crop_images in enumerate(context.images):
                crop_detector = self.detector_for_level(level + r + 1)
                crop_batch, crop_sizes = crop_detector.preprocess(crop_images)
                # Pad to the nominal crop size so that rel_boxes (fractions of it) index the maps.
                # Zeros after normalising = the mean colour, which is what the training data set
                # pads its crops with (hbdnet.data.windows.WindowConfig.pad_value): a crop padded
                # there or here gives the same tensor.
                size = self.cfg.window
                crop_batch = F.pad(crop_batch, (0, size - crop_batch.shape[-1], 0, size - crop_batch.shape[-2]))
                feats = crop_detector.extract_features(crop_batch)
                context_feats.append(feats)
                if targets is not None and context.targets is not None:
                    losses = crop_detector.forward_heads(feats, crop_sizes, context.targets[r])
                    for name, value in losses.items():
                        key = f"{name}_global"
                        extra_losses[key] = extra_losses.get(key, 0) + value / len(context.images)
            features = self.fusion(features, context_feats, context.rel_boxes.to(batch.device))
        out = detector.forward_heads(features, sizes, targets)
        if targets is not None:
            return {**out, **extra_losses}
        return out

    @torch.no_grad()
    def detect(self, images: list[Tensor], level: int, context: WindowContext | None = None) -> Detections:
        was_training = self.training
        self.eval()
        try:
            return self(images, level, context=context)
        finally:
            self.train(was_training)
