"""Oriented RPN (Oriented R-CNN's first stage): horizontal anchors in, oriented proposals out.

Layer names (``rpn_conv``, ``rpn_cls``, ``rpn_reg``) and the channel layout of ``rpn_reg``
(``anchor * 6 + delta``) match mmrotate's ``OrientedRPNHead``, so the authors' weights load as is.
Training and proposal selection follow the authors' config (see ``OrientedRPNHead.__init__``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hbdnet.boxes.convention import le90_to_oc, obb_to_hbb
from hbdnet.boxes.nms import batched_nms_horizontal
from hbdnet.models.anchors import AnchorGenerator, anchor_inside_flags
from hbdnet.models.coders import MidpointOffsetCoder
from hbdnet.models.matching import MaxIoUAssigner, RandomSampler, box_iou_xyxy
from hbdnet.threads import one_cpu_thread

Targets = list[dict[str, Tensor]]


class OrientedRPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then per anchor one sigmoid objectness logit and 6 midpoint-offset deltas.

    Training: anchors are matched to the horizontal hulls of the GT boxes (horizontal IoU,
    pos 0.7 / neg 0.3 / low-quality matches >= 0.3), 256 anchors are sampled with up to 50 %
    positives, and both losses (sigmoid BCE, SmoothL1 with beta 1/9 on the 6 deltas) are summed
    and divided by the number of sampled anchors in the batch (mmdet's ``avg_factor``).

    Proposals (training and test): per level the ``nms_pre`` best anchors by score, decoded to
    ``oc`` rows, NMS at ``nms_iou`` on their horizontal hulls separately per level, then the best
    ``max_per_img`` overall (``test_max_per_img`` in eval mode, when given: the RoIs the box head then
    scores, most of the head's time on a CPU).
    """

    def __init__(
        self,
        in_channels: int = 256,
        feat_channels: int = 256,
        anchor_generator: AnchorGenerator | None = None,
        allowed_border: int = 0,
        pos_iou_thr: float = 0.7,
        neg_iou_thr: float = 0.3,
        min_pos_iou: float = 0.3,
        num_samples: int = 256,
        pos_fraction: float = 0.5,
        smooth_l1_beta: float = 1.0 / 9.0,
        nms_pre: int = 2000,
        max_per_img: int = 2000,
        test_max_per_img: int | None = None,
        nms_iou: float = 0.8,
        min_bbox_size: float = 0.0,
    ):
        super().__init__()
        self.anchor_generator = anchor_generator or AnchorGenerator()
        num_anchors = self.anchor_generator.num_anchors
        self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, num_anchors, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, num_anchors * 6, 1)
        for conv in (self.rpn_conv, self.rpn_cls, self.rpn_reg):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

        self.coder = MidpointOffsetCoder()
        self.assigner = MaxIoUAssigner(pos_iou_thr, neg_iou_thr, min_pos_iou, match_low_quality=True)
        self.sampler = RandomSampler(num_samples, pos_fraction, add_gt_as_proposals=False)
        self.allowed_border = allowed_border
        self.smooth_l1_beta = smooth_l1_beta
        self.nms_pre = nms_pre
        self.max_per_img = max_per_img
        self.test_max_per_img = max_per_img if test_max_per_img is None else test_max_per_img
        self.nms_iou = nms_iou
        self.min_bbox_size = min_bbox_size

    def head(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: objectness logits ``(B, H*W*A)`` and deltas ``(B, H*W*A, 6)`` in anchor order."""
        logits, deltas = [], []
        for x in features:
            t = F.relu(self.rpn_conv(x))
            b = x.shape[0]
            logits.append(self.rpn_cls(t).permute(0, 2, 3, 1).reshape(b, -1))
            deltas.append(self.rpn_reg(t).permute(0, 2, 3, 1).reshape(b, -1, 6))
        return logits, deltas

    def forward(
        self, features: list[Tensor], image_sizes: list[tuple[int, int]], targets: Targets | None = None,
        head_outputs: tuple[list[Tensor], list[Tensor]] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Returns per-image proposals ``(n, 5)`` (``oc`` rows, best first) and, with targets, the losses.
        ``head_outputs``: ``head(features)`` computed elsewhere (an exported trunk)."""
        logits, deltas = head_outputs if head_outputs is not None else self.head(features)
        anchors = self.anchor_generator.grid_anchors([f.shape[-2:] for f in features], features[0].device)
        with torch.no_grad(), one_cpu_thread(features[0].device):
            proposals = [boxes for boxes, _ in self.get_proposals(logits, deltas, anchors, image_sizes)]
        losses: dict[str, Tensor] = {}
        if targets is not None:
            losses = self.loss(logits, deltas, anchors, image_sizes, targets)
        return proposals, losses

    def loss(
        self,
        logits: list[Tensor],
        deltas: list[Tensor],
        anchors: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: Targets,
    ) -> dict[str, Tensor]:
        all_logits = torch.cat(logits, dim=1)  # (B, N)
        all_deltas = torch.cat(deltas, dim=1)  # (B, N, 6)
        all_anchors = torch.cat(anchors)  # (N, 4)
        cls_terms, reg_terms = [], []
        num_samples = 0
        for i, (size, target) in enumerate(zip(image_sizes, targets, strict=True)):
            inside = torch.nonzero(anchor_inside_flags(all_anchors, size, self.allowed_border)).squeeze(1)
            cand = all_anchors[inside]
            gt_oc = le90_to_oc(target["boxes"].to(cand))
            ious = box_iou_xyxy(obb_to_hbb(gt_oc), cand)
            assign = self.assigner.assign(ious)
            sample = self.sampler.sample(assign, cand)
            pos, neg = sample.pos_inds, sample.neg_inds
            num_samples += pos.numel() + neg.numel()

            sampled = torch.cat([pos, neg])
            labels = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]).to(all_logits)
            cls_terms.append(
                F.binary_cross_entropy_with_logits(all_logits[i, inside[sampled]], labels, reduction="sum")
            )
            reg_targets = self.coder.encode(cand[pos], gt_oc[sample.pos_assigned_gt_inds])
            reg_terms.append(
                F.smooth_l1_loss(all_deltas[i, inside[pos]], reg_targets, beta=self.smooth_l1_beta, reduction="sum")
            )
        avg = max(num_samples, 1)
        return {"loss_rpn_cls": sum(cls_terms) / avg, "loss_rpn_bbox": sum(reg_terms) / avg}

    def get_proposals(
        self,
        logits: list[Tensor],
        deltas: list[Tensor],
        anchors: list[Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> list[tuple[Tensor, Tensor]]:
        """Per image: proposals ``(n, 5)`` as ``oc`` rows and their scores ``(n,)``, best first."""
        results = []
        for i in range(len(image_sizes)):
            scores, reg, anc, level_ids = [], [], [], []
            for level, (lg, dl, an) in enumerate(zip(logits, deltas, anchors, strict=True)):
                s = lg[i].detach().sigmoid()
                d = dl[i].detach()
                if s.numel() > self.nms_pre:
                    s, order = s.sort(descending=True)
                    s, order = s[: self.nms_pre], order[: self.nms_pre]
                    d, an = d[order], an[order]
                scores.append(s)
                reg.append(d)
                anc.append(an)
                level_ids.append(torch.full_like(s, level, dtype=torch.long))
            s = torch.cat(scores)
            ids = torch.cat(level_ids)
            boxes = self.coder.decode(torch.cat(anc), torch.cat(reg))
            if self.min_bbox_size > 0:
                valid = (boxes[:, 2] >= self.min_bbox_size) & (boxes[:, 3] >= self.min_bbox_size)
                boxes, s, ids = boxes[valid], s[valid], ids[valid]
            if boxes.shape[0] == 0:
                results.append((boxes, s))
                continue
            limit = self.max_per_img if self.training else self.test_max_per_img
            keep = batched_nms_horizontal(obb_to_hbb(boxes), s, ids, self.nms_iou)[:limit]
            results.append((boxes[keep], s[keep]))
        return results
