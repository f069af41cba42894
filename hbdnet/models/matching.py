"""Training-time matching: mmdet's ``MaxIoUAssigner`` and ``RandomSampler``, plus horizontal IoU.

The assigner works on a precomputed ``(G, N)`` IoU matrix, so the same class serves the RPN
(horizontal IoU of anchors against GT hulls) and the RoI head (rotated IoU of proposals against GTs).
Assignment codes follow mmdet: ``gt_inds[j] = -1`` ignored, ``0`` negative, ``k > 0`` matched to GT
``k - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def box_iou_xyxy(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """``(N, M)`` IoU of horizontal ``x1, y1, x2, y2`` boxes (mmdet ``bbox_overlaps``, no +1 offset)."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = (area1[:, None] + area2[None, :] - overlap).clamp(min=eps)
    return overlap / union


@dataclass
class AssignResult:
    """Per-candidate assignment: ``gt_inds`` (N,) int64 codes, ``max_overlaps`` (N,), ``labels`` (N,)
    (-1 where not positive or where no labels were given)."""

    num_gts: int
    gt_inds: Tensor
    max_overlaps: Tensor
    labels: Tensor

    def with_gts_prepended(self, gt_labels: Tensor) -> AssignResult:
        """The assignment after the GT boxes are put in front of the candidates (each matched to itself)."""
        n = gt_labels.numel()
        self_inds = torch.arange(1, n + 1, dtype=torch.long, device=self.gt_inds.device)
        return AssignResult(
            num_gts=self.num_gts,
            gt_inds=torch.cat([self_inds, self.gt_inds]),
            max_overlaps=torch.cat([self.max_overlaps.new_ones(n), self.max_overlaps]),
            labels=torch.cat([gt_labels.to(self.labels), self.labels]),
        )


class MaxIoUAssigner:
    """Each candidate goes to its best GT if IoU >= ``pos_iou_thr``; negative if its best IoU is in
    ``[0, neg_iou_thr)``; otherwise ignored (the band between the thresholds).

    With ``match_low_quality``, each GT whose best IoU is >= ``min_pos_iou`` also takes the candidates
    that reach that best IoU (all of them when ``gt_max_assign_all``, as mmdet's default; later GTs win
    ties, as in mmdet's loop).
    """

    def __init__(
        self,
        pos_iou_thr: float,
        neg_iou_thr: float,
        min_pos_iou: float = 0.0,
        match_low_quality: bool = True,
        gt_max_assign_all: bool = True,
    ):
        self.pos_iou_thr = pos_iou_thr
        self.neg_iou_thr = neg_iou_thr
        self.min_pos_iou = min_pos_iou
        self.match_low_quality = match_low_quality
        self.gt_max_assign_all = gt_max_assign_all

    def assign(self, ious: Tensor, gt_labels: Tensor | None = None) -> AssignResult:
        """``ious``: ``(G, N)``, GTs by candidates."""
        num_gts, num_boxes = ious.shape
        gt_inds = ious.new_full((num_boxes,), -1, dtype=torch.long)
        labels = ious.new_full((num_boxes,), -1, dtype=torch.long)
        if num_gts == 0 or num_boxes == 0:
            if num_gts == 0:
                gt_inds.zero_()
            return AssignResult(num_gts, gt_inds, ious.new_zeros(num_boxes), labels)

        max_overlaps, argmax = ious.max(dim=0)
        gt_max, gt_argmax = ious.max(dim=1)
        gt_inds[(max_overlaps >= 0) & (max_overlaps < self.neg_iou_thr)] = 0
        pos = max_overlaps >= self.pos_iou_thr
        gt_inds[pos] = argmax[pos] + 1
        if self.match_low_quality:
            for i in range(num_gts):
                if gt_max[i] >= self.min_pos_iou:
                    if self.gt_max_assign_all:
                        gt_inds[ious[i] == gt_max[i]] = i + 1
                    else:
                        gt_inds[gt_argmax[i]] = i + 1
        if gt_labels is not None:
            matched = gt_inds > 0
            labels[matched] = gt_labels[gt_inds[matched] - 1]
        return AssignResult(num_gts, gt_inds, max_overlaps, labels)


@dataclass
class SamplingResult:
    """Indices into the candidate set that was sampled (GTs first when they were added as proposals)."""

    pos_inds: Tensor  # (P,) sorted
    neg_inds: Tensor  # (Q,) sorted
    pos_assigned_gt_inds: Tensor  # (P,) index of the matched GT
    pos_is_gt: Tensor  # (P,) bool, the positive is a GT added as a proposal
    candidates: Tensor  # (N', D) the candidate boxes the indices refer to


class RandomSampler:
    """mmdet's ``RandomSampler``: up to ``num * pos_fraction`` positives, the rest negatives, uniformly.

    ``neg_pos_ub >= 0`` caps negatives at that many times the positives. Randomness comes from
    ``torch.randperm`` on the default generator, so ``torch.manual_seed`` makes sampling reproducible.
    """

    def __init__(self, num: int, pos_fraction: float, neg_pos_ub: int = -1, add_gt_as_proposals: bool = False):
        self.num = num
        self.pos_fraction = pos_fraction
        self.neg_pos_ub = neg_pos_ub
        self.add_gt_as_proposals = add_gt_as_proposals

    @staticmethod
    def _choose(inds: Tensor, k: int) -> Tensor:
        if inds.numel() <= k:
            return inds
        perm = torch.randperm(inds.numel(), device=inds.device)[:k]
        return inds[perm]

    def sample(
        self,
        assign: AssignResult,
        candidates: Tensor,
        gt_boxes: Tensor | None = None,
        gt_labels: Tensor | None = None,
    ) -> SamplingResult:
        """Sample from ``candidates`` (``(N, D)``, assigned by ``assign``).

        With ``add_gt_as_proposals``, ``gt_boxes`` (in the same form as the candidates) and ``gt_labels``
        are required; the GTs are put in front of the candidates first.
        """
        is_gt = torch.zeros(candidates.shape[0], dtype=torch.bool, device=candidates.device)
        if self.add_gt_as_proposals:
            if gt_boxes is None or gt_labels is None:
                raise ValueError("add_gt_as_proposals needs gt_boxes and gt_labels")
            if gt_boxes.shape[0] > 0:
                candidates = torch.cat([gt_boxes.to(candidates), candidates])
                assign = assign.with_gts_prepended(gt_labels)
                gt_flags = torch.ones(gt_boxes.shape[0], dtype=torch.bool, device=is_gt.device)
                is_gt = torch.cat([gt_flags, is_gt])

        num_pos_expected = int(self.num * self.pos_fraction)
        pos = self._choose(torch.nonzero(assign.gt_inds > 0).squeeze(1), num_pos_expected).unique()
        num_neg_expected = self.num - pos.numel()
        if self.neg_pos_ub >= 0:
            num_neg_expected = min(num_neg_expected, int(self.neg_pos_ub * max(1, pos.numel())))
        neg = self._choose(torch.nonzero(assign.gt_inds == 0).squeeze(1), num_neg_expected).unique()
        return SamplingResult(
            pos_inds=pos,
            neg_inds=neg,
            pos_assigned_gt_inds=assign.gt_inds[pos] - 1,
            pos_is_gt=is_gt[pos],
            candidates=candidates,
        )
