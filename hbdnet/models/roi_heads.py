"""Second stage of Oriented R-CNN: rotated RoI features, the 2-FC box head, and the RoI head around them.

Names match mmrotate (``roi_head.bbox_head.shared_fcs.{0,1}``, ``fc_cls``, ``fc_reg``); ``fc_cls`` has
``num_classes + 1`` outputs with the background last (``[bridge, background]`` for one class) and
``fc_reg`` is class-agnostic.

``task="obb"`` is Oriented R-CNN as the authors trained it. ``task="hbb"`` is the Faster R-CNN-style
variant: the proposals' horizontal hulls are the RoIs (theta 0), matching uses horizontal IoU
against the GT hulls, ``fc_reg`` has 4 outputs with the standard ``DeltaXYWHBBoxCoder``, and NMS is
horizontal. Both return ``le90`` boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hbdnet.boxes.convention import hbb_to_obb, le90_to_oc, obb_to_hbb, regularize_le90
from hbdnet.boxes.iou import box_iou_rotated
from hbdnet.boxes.nms import batched_nms_horizontal, batched_nms_rotated
from hbdnet.boxes.roi_align import roi_align_rotated
from hbdnet.models.coders import DeltaXYWHAOBBoxCoder, DeltaXYWHBBoxCoder
from hbdnet.models.matching import MaxIoUAssigner, RandomSampler, SamplingResult, box_iou_xyxy
from hbdnet.models.ssrw import ssrw_weights
from hbdnet.threads import one_cpu_thread

Task = Literal["obb", "hbb"]
Targets = list[dict[str, Tensor]]
Detections = list[dict[str, Tensor]]


def boxes_to_rois(boxes: list[Tensor]) -> Tensor:
    """Per-image ``(n_i, 5)`` boxes -> ``(sum n_i, 6)`` rows ``[batch_idx, cx, cy, w, h, theta]``."""
    rows = [torch.cat([b.new_full((b.shape[0], 1), i), b], dim=1) for i, b in enumerate(boxes)]
    return torch.cat(rows) if rows else torch.zeros(0, 6)


def xyxy_to_rows(boxes: Tensor) -> Tensor:
    """Horizontal ``x1, y1, x2, y2`` -> ``(cx, cy, w, h, 0)`` rows (w along x, not reordered)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, torch.zeros_like(x1)], dim=-1)


def rotated_iou_clamped(gt: Tensor, boxes: Tensor) -> Tensor:
    """``(G, N)`` rotated IoU with w and h clamped at 1e-3, as mmrotate's ``RBboxOverlaps2D``."""
    if gt.shape[0] == 0 or boxes.shape[0] == 0:
        return gt.new_zeros(gt.shape[0], boxes.shape[0])
    gt = gt.detach().clone()
    boxes = boxes.detach().clone()
    gt[:, 2:4] = gt[:, 2:4].clamp(min=1e-3)
    boxes[:, 2:4] = boxes[:, 2:4].clamp(min=1e-3)
    return box_iou_rotated(gt, boxes)


class RotatedRoIExtractor(nn.Module):
    """RoIAlignRotated on the FPN level chosen by each RoI's size (mmrotate ``RotatedSingleRoIExtractor``).

    level = clamp(floor(log2(sqrt(w h) / finest_scale + 1e-6)), 0, L - 1): with ``finest_scale`` 56,
    sqrt(area) < 112 goes to P2, [112, 224) to P3, [224, 448) to P4, larger to P5.
    """

    def __init__(
        self,
        output_size: int = 7,
        sampling_ratio: int = 2,
        featmap_strides: Sequence[int] = (4, 8, 16, 32),
        finest_scale: float = 56.0,
    ):
        super().__init__()
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.featmap_strides = list(featmap_strides)
        self.finest_scale = finest_scale

    @property
    def num_inputs(self) -> int:
        return len(self.featmap_strides)

    def map_levels(self, rois: Tensor) -> Tensor:
        scale = torch.sqrt(rois[:, 3] * rois[:, 4])
        levels = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return levels.clamp(0, self.num_inputs - 1).long()

    def forward(self, features: Sequence[Tensor], rois: Tensor) -> Tensor:
        """``features``: at least ``num_inputs`` maps (extra ones are ignored); ``rois``: ``(K, 6)``."""
        c = features[0].shape[1]
        out = features[0].new_zeros(rois.shape[0], c, self.output_size, self.output_size)
        if rois.shape[0] == 0:
            return out
        levels = self.map_levels(rois)
        for lvl, stride in enumerate(self.featmap_strides):
            inds = torch.nonzero(levels == lvl).squeeze(1)
            if inds.numel() == 0:
                continue
            out[inds] = roi_align_rotated(
                features[lvl],
                rois[inds],
                output_size=self.output_size,
                spatial_scale=1.0 / stride,
                sampling_ratio=self.sampling_ratio,
                aligned=True,
                clockwise=True,
            )
        return out


class RotatedShared2FCBBoxHead(nn.Module):
    """Flatten, two shared FC + ReLU, then class logits and class-agnostic box deltas."""

    def __init__(
        self,
        in_channels: int = 256,
        roi_size: int = 7,
        fc_channels: int = 1024,
        num_classes: int = 1,
        reg_dim: int = 5,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.shared_fcs = nn.ModuleList(
            [nn.Linear(in_channels * roi_size * roi_size, fc_channels), nn.Linear(fc_channels, fc_channels)]
        )
        self.fc_cls = nn.Linear(fc_channels, num_classes + 1)
        self.fc_reg = nn.Linear(fc_channels, reg_dim)
        for fc in self.shared_fcs:
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.normal_(self.fc_reg.weight, std=0.001)
        nn.init.zeros_(self.fc_cls.bias)
        nn.init.zeros_(self.fc_reg.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


class OrientedRoIHead(nn.Module):
    """Matching, sampling, losses and post-processing around the extractor and the box head.

    Training (authors' config): IoU >= 0.5 positive, < 0.5 negative, no low-quality matches; GTs are
    added as proposals; 512 RoIs per image with up to 25 % positives. Losses: softmax cross-entropy
    averaged over the sampled RoIs, SmoothL1 (beta 1) on the positives' deltas summed and divided by
    the number of sampled RoIs in the batch. With ``use_ssrw`` the positives' regression weights are
    the SSRW weights instead of 1.

    Inference: softmax, decode (centres clamped to the image), per class score > ``score_thr``,
    class-aware NMS at ``nms_iou``, at most ``max_per_img`` boxes.
    """

    def __init__(
        self,
        bbox_roi_extractor: RotatedRoIExtractor,
        bbox_head: RotatedShared2FCBBoxHead,
        task: Task = "obb",
        pos_iou_thr: float = 0.5,
        neg_iou_thr: float = 0.5,
        min_pos_iou: float = 0.5,
        num_samples: int = 512,
        pos_fraction: float = 0.25,
        add_gt_as_proposals: bool = True,
        use_ssrw: bool = False,
        ssrw_mu: float = 0.3,
        smooth_l1_beta: float = 1.0,
        score_thr: float = 0.05,
        nms_iou: float = 0.4,
        max_per_img: int = 400,
    ):
        super().__init__()
        if task not in ("obb", "hbb"):
            raise ValueError(f"task must be 'obb' or 'hbb', got {task!r}")
        expected_reg = 5 if task == "obb" else 4
        if bbox_head.fc_reg.out_features != expected_reg:
            raise ValueError(f"task {task!r} needs fc_reg with {expected_reg} outputs")
        self.bbox_roi_extractor = bbox_roi_extractor
        self.bbox_head = bbox_head
        self.task = task
        self.obb_coder = DeltaXYWHAOBBoxCoder()
        self.hbb_coder = DeltaXYWHBBoxCoder()
        self.assigner = MaxIoUAssigner(pos_iou_thr, neg_iou_thr, min_pos_iou, match_low_quality=False)
        self.sampler = RandomSampler(num_samples, pos_fraction, add_gt_as_proposals=add_gt_as_proposals)
        self.use_ssrw = use_ssrw
        self.ssrw_mu = ssrw_mu
        self.smooth_l1_beta = smooth_l1_beta
        self.score_thr = score_thr
        self.nms_iou = nms_iou
        self.max_per_img = max_per_img

    @property
    def num_classes(self) -> int:
        return self.bbox_head.num_classes

    def _candidates(self, proposals: Tensor) -> Tensor:
        """Proposal rows the head works on: ``oc`` rows (obb) or horizontal hulls ``x1, y1, x2, y2`` (hbb)."""
        return proposals if self.task == "obb" else obb_to_hbb(proposals)

    def _rois(self, candidates: list[Tensor]) -> Tensor:
        rows = candidates if self.task == "obb" else [xyxy_to_rows(c) for c in candidates]
        return boxes_to_rois(rows)

    def _run_head(self, features: Sequence[Tensor], candidates: list[Tensor]) -> tuple[Tensor, Tensor]:
        rois = self._rois(candidates).to(features[0])
        roi_feats = self.bbox_roi_extractor(features[: self.bbox_roi_extractor.num_inputs], rois)
        return self.bbox_head(roi_feats)

    def forward(
        self,
        features: Sequence[Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: Targets | None = None,
    ) -> tuple[Detections, dict[str, Tensor]]:
        """``proposals``: per image ``(n, 5)`` ``oc`` rows from the RPN. Returns (detections, losses):
        losses when ``targets`` are given, detections otherwise."""
        if targets is not None:
            return [], self.loss(features, proposals, targets)
        return self.predict(features, proposals, image_sizes), {}

    def _match(self, candidates: Tensor, gt_oc: Tensor, gt_labels: Tensor) -> SamplingResult:
        if self.task == "obb":
            gt_rows = gt_oc
            ious = rotated_iou_clamped(gt_oc, candidates)
        else:
            gt_rows = obb_to_hbb(gt_oc)
            ious = box_iou_xyxy(gt_rows, candidates)
        assign = self.assigner.assign(ious, gt_labels)
        return self.sampler.sample(assign, candidates, gt_rows, gt_labels)

    def loss(self, features: Sequence[Tensor], proposals: list[Tensor], targets: Targets) -> dict[str, Tensor]:
        sampled, labels, reg_targets, reg_weights, is_pos = [], [], [], [], []
        for props, target in zip(proposals, targets, strict=True):
            gt_oc = le90_to_oc(target["boxes"].to(props))
            gt_labels = target["labels"].to(props.device)
            cand = self._candidates(props.detach())
            s = self._match(cand, gt_oc, gt_labels)
            pos_cand = s.candidates[s.pos_inds]
            matched = gt_oc[s.pos_assigned_gt_inds]
            sampled.append(torch.cat([pos_cand, s.candidates[s.neg_inds]]))
            num_pos, num_neg = s.pos_inds.numel(), s.neg_inds.numel()
            labels.append(
                torch.cat([gt_labels[s.pos_assigned_gt_inds], gt_labels.new_full((num_neg,), self.num_classes)])
            )
            if self.task == "obb":
                reg_targets.append(self.obb_coder.encode(pos_cand, matched))
                centres = pos_cand[:, :2]
            else:
                reg_targets.append(self.hbb_coder.encode(pos_cand, obb_to_hbb(matched)))
                centres = (pos_cand[:, :2] + pos_cand[:, 2:]) / 2
            if self.use_ssrw:
                reg_weights.append(ssrw_weights(centres, matched, self.ssrw_mu))
            else:
                reg_weights.append(centres.new_ones(num_pos))
            is_pos.append(torch.cat([torch.ones(num_pos, dtype=torch.bool), torch.zeros(num_neg, dtype=torch.bool)]))

        cls_logits, deltas = self._run_head(features, sampled)
        all_labels = torch.cat(labels)
        pos_mask = torch.cat(is_pos).to(deltas.device)
        num_total = max(all_labels.numel(), 1)
        loss_cls = F.cross_entropy(cls_logits, all_labels, reduction="sum") / num_total
        per_elem = F.smooth_l1_loss(
            deltas[pos_mask], torch.cat(reg_targets), beta=self.smooth_l1_beta, reduction="none"
        )
        loss_bbox = (per_elem * torch.cat(reg_weights)[:, None]).sum() / num_total
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox}

    @torch.no_grad()
    def predict(
        self, features: Sequence[Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> Detections:
        candidates = [self._candidates(p) for p in proposals]
        cls_logits, deltas = self._run_head(features, candidates)
        counts = [c.shape[0] for c in candidates]
        results = []
        with one_cpu_thread(cls_logits.device):
            for cand, logits, d, size in zip(
                candidates, cls_logits.split(counts), deltas.split(counts), image_sizes, strict=True
            ):
                scores = F.softmax(logits, dim=-1)[:, : self.num_classes]  # (n, C), background dropped
                if self.task == "obb":
                    boxes = self.obb_coder.decode(cand, d, max_shape=size)
                else:
                    boxes = self.hbb_coder.decode(cand, d, max_shape=size)
                results.append(self._nms(boxes, scores))
        return results

    def _nms(self, boxes: Tensor, scores: Tensor) -> dict[str, Tensor]:
        """Class-aware NMS of class-agnostic boxes ``(n, D)`` with per-class scores ``(n, C)``."""
        n, c = scores.shape
        flat_boxes = boxes[:, None, :].expand(n, c, boxes.shape[1]).reshape(n * c, boxes.shape[1])
        flat_scores = scores.reshape(-1)
        flat_labels = torch.arange(c, device=scores.device).repeat(n)
        valid = flat_scores > self.score_thr
        flat_boxes, flat_scores, flat_labels = flat_boxes[valid], flat_scores[valid], flat_labels[valid]
        if flat_scores.numel() == 0:
            keep = torch.zeros(0, dtype=torch.long, device=scores.device)
        elif self.task == "obb":
            keep = batched_nms_rotated(flat_boxes, flat_scores, flat_labels, self.nms_iou)
        else:
            keep = batched_nms_horizontal(flat_boxes, flat_scores, flat_labels, self.nms_iou)
        keep = keep[: self.max_per_img]
        kept = flat_boxes[keep]
        out_boxes = regularize_le90(kept) if self.task == "obb" else hbb_to_obb(kept)
        return {"boxes": out_boxes.reshape(-1, 5), "scores": flat_scores[keep], "labels": flat_labels[keep]}

