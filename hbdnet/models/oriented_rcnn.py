"""Oriented R-CNN on one batch of windows, as four visible steps.

    batch, sizes = preprocess(images)            # normalise, pad to /32
    features     = extract_features(batch)       # backbone + FPN -> P2..P6
    proposals    = rpn_head(features, ...)       # oriented proposals (mmrotate 'oc' rows)
    detections   = roi_head(features, proposals) # boxes, scores, labels

``extract_features`` and ``forward_heads`` are public so that HBD-Net can change the features
between them (inter-layer feature fusion) or share one backbone over several heads. At inference,
``detect_features`` may instead run an exported trunk (``trunk``: backbone, FPN and the RPN head's
convs in another runtime, ``hbdnet.models.onnx_trunk``), whose RPN head outputs then go to the heads.

Boxes at the interface are the package's internal ``le90`` rows in the pixels of the input images;
the conversion to and from mmrotate's ``oc`` rows, which the heads use internally, happens inside.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from hbdnet.models.fpn import FPN
from hbdnet.models.roi_heads import OrientedRoIHead
from hbdnet.models.rpn import OrientedRPNHead
from hbdnet.models.transform import batch_images

Targets = list[dict[str, Tensor]]
Detections = list[dict[str, Tensor]]
RPNOutputs = tuple[list[Tensor], list[Tensor]]  # per level: objectness logits, deltas (OrientedRPNHead.head)


class OrientedRCNN(nn.Module):
    """Two-stage oriented detector (attribute names match the authors' checkpoint keys).

    ``forward(images)`` takes RGB 0-255 images, a ``(B, 3, H, W)`` tensor or a list of ``(3, H, W)``.

    * Training (``targets`` given): a dict ``loss_rpn_cls``, ``loss_rpn_bbox``, ``loss_cls``,
      ``loss_bbox``. Each target is ``{"boxes": (N, 5) le90 pixels, "labels": (N,) int64}`` (label 0 is
      bridge); an image may have no boxes.
    * Inference: per image ``{"boxes": (N, 5) le90, "scores": (N,), "labels": (N,) int64}``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: FPN,
        rpn_head: OrientedRPNHead,
        roi_head: OrientedRoIHead,
        size_divisor: int = 32,
    ):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.rpn_head = rpn_head
        self.roi_head = roi_head
        self.size_divisor = size_divisor
        # At inference only: batch -> (features, (RPN logits, RPN deltas)), e.g. an OnnxTrunk.
        self.trunk: Callable[[Tensor], tuple[list[Tensor], RPNOutputs]] | None = None

    def preprocess(self, images: Tensor | Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Normalised, zero-padded batch on the model's device and the ``(H, W)`` of each image."""
        batch, sizes = batch_images(images, self.size_divisor)
        # The RoI head's: an exported trunk's PyTorch modules are on the meta device.
        return batch.to(next(self.roi_head.parameters()).device), sizes

    def extract_features(self, batch: Tensor) -> list[Tensor]:
        """``(B, 3, H, W)`` normalised batch -> FPN maps P2..P6 (strides 4..64)."""
        return self.neck(self.backbone(batch))

    def detect_features(self, batch: Tensor) -> tuple[list[Tensor], RPNOutputs | None]:
        """For inference: the FPN maps and, when an exported ``trunk`` computed them with the maps, the
        RPN head's outputs."""
        if self.trunk is not None:
            return self.trunk(batch)
        return self.extract_features(batch), None

    def forward_heads(
        self, features: list[Tensor], image_sizes: list[tuple[int, int]], targets: Targets | None = None,
        rpn_outputs: RPNOutputs | None = None,
    ) -> dict[str, Tensor] | Detections:
        proposals, rpn_losses = self.rpn_head(features, image_sizes, targets, rpn_outputs)
        detections, roi_losses = self.roi_head(features, proposals, image_sizes, targets)
        if targets is not None:
            return {**rpn_losses, **roi_losses}
        return detections

    def forward(
        self, images: Tensor | Sequence[Tensor], targets: Targets | None = None
    ) -> dict[str, Tensor] | Detections:
        batch, sizes = self.preprocess(images)
        if targets is not None:
            return self.forward_heads(self.extract_features(batch), sizes, targets)
        features, rpn_outputs = self.detect_features(batch)
        return self.forward_heads(features, sizes, rpn_outputs=rpn_outputs)
