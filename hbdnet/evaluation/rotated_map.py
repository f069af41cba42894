"""Whole-image average precision for one class, as the authors evaluate GLH-Bridge (section 8.2).

Matching follows mmdet / mmrotate ``tpfp_default`` with the authors' length ranges:

* per image, detections are taken by decreasing score; each one looks only at the ground truth
  (GT) it overlaps most (max IoU over all GTs of the image, difficult ones included);
* IoU >= thr: if that GT is difficult, or (in a length range) its length is outside the range, the
  detection is neither TP nor FP; else TP if the GT is not matched yet, FP if it is;
* IoU < thr: FP, except that in a length range it is an FP only if the detection's own length is
  in the range;
* a GT's / detection's length is ``max(w, h)`` (of the hull for ``box_type="hbb"``); ranges are
  ``[lo, hi)``.

Precision and recall are pooled over all images (detections of all images sorted by score; ties
keep image order, then input order) and AP is VOC07 11-point (``use_07_metric=True``, as the
authors) or the VOC2010+ area under the interpolated curve. Recall counts the non-difficult GTs
(in the range, for a range).

Reported numbers and which one the paper's table uses:

* ``AP50``, ``AP75``: AP at IoU 0.5 / 0.75 on all lengths (printed by the authors' ``evaluate``);
* ``mAP``: mean AP over IoU 0.50:0.05:0.95 on all lengths. The authors' code never prints it, but
  the table's mAP column lies between AP50 and AP75 for every method, which fits this COCO-style
  mean and no other printed number; this is the definition taken to reproduce the table;
* ``ap_short``, ``ap_middle``, ``ap_large``, ``ap_huge``: per length range, AP averaged over the same
  IoU thresholds (the authors' ``mAP`` list over ``[0,50), [50,200), [200,800), [800,20000)``);
* ``f1``, ``f1_score_thr``, ``f1_precision``, ``f1_recall``: the operating point, at IoU 0.5 on all
  lengths, of the score threshold with the best F1 (keep detections scoring at least
  ``f1_score_thr``); this is how a model's default threshold is chosen (``hbdnet export --score-thr``);
* ``op_score_thr``, ``op_tp``, ``op_fp``, ``op_precision``, ``op_recall``, ``op_fp_per_100_images``:
  what a given operating point keeps, at IoU 0.5 (when ``score_thr`` is given; ``hbdnet eval`` gives
  the model's), e.g. false boxes per 100 bridge-free images;
* ``AP<t>`` for every threshold, and counts: ``num_images``, ``num_dets``, ``num_gts`` (non-difficult),
  ``num_difficult``, ``num_gts_<range>``.

Definitions where the reference is silent or accidental:

* AP with no (non-difficult) GT to find is undefined and reported as NaN (mmdet reports 0.0, which
  reads like a total failure and drags any average down); the counts show why.
* With no GT in an image but a length range set, the authors' code measured detections with the
  horizontal-box area formula on rotated rows; here the detection's length decides, as everywhere.
* ``difficult`` GTs are ignored as above. The authors' GLH-Bridge loader marked none difficult (its
  difficulty threshold is 100), so pass all-False flags to reproduce their protocol exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from hbdnet.boxes.convention import obb_to_hbb
from hbdnet.boxes.iou import box_iou_rotated

DEFAULT_IOU_THRS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
DEFAULT_LENGTH_RANGES: tuple[tuple[float, float], ...] = ((0, 50), (50, 200), (200, 800), (800, math.inf))
DEFAULT_RANGE_NAMES: tuple[str, ...] = ("short", "middle", "large", "huge")

_EPS = float(np.finfo(np.float32).eps)  # as mmdet, so that 0 / 0 gives precision 0


def average_precision(recalls: np.ndarray, precisions: np.ndarray, use_07_metric: bool = True) -> float:
    """AP of one precision/recall curve (points in score order).

    11-point: the mean over ``t = 0, 0.1, ..., 1`` of the highest precision at recall >= t (0 if
    that recall is never reached). Area: the area under the curve made monotone from the right.
    """
    recalls = np.asarray(recalls, dtype=np.float64)
    precisions = np.asarray(precisions, dtype=np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.linspace(0.0, 1.0, 11):
            reached = precisions[recalls >= t]
            ap += float(reached.max()) if reached.size else 0.0
        return ap / 11
    mrec = np.concatenate([[0.0], recalls, [1.0]])
    mpre = np.concatenate([[0.0], precisions, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


@dataclass
class _Image:
    scores: np.ndarray  # (n,)
    det_len: np.ndarray  # (n,)
    gt_len: np.ndarray  # (m,)
    difficult: np.ndarray  # (m,) bool
    best_iou: np.ndarray  # (n,) max IoU over GTs (-1 without GTs)
    best_gt: np.ndarray  # (n,) its GT index
    order: np.ndarray  # (n,) detections by decreasing score


def _hbb_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of ``(N, 4)`` and ``(M, 4)`` axis-aligned ``(x1, y1, x2, y2)`` boxes."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def _lengths(boxes: Tensor, box_type: str) -> np.ndarray:
    if box_type == "hbb":
        hull = obb_to_hbb(boxes)
        sides = hull[:, 2:] - hull[:, :2]
    else:
        sides = boxes[:, 2:4].abs()
    return sides.amax(1).numpy() if len(boxes) else np.zeros(0)


def _prepare(det: tuple[Tensor, Tensor], gt: tuple[Tensor, Tensor], box_type: str, index: int) -> _Image:
    boxes, scores = det
    gt_boxes, difficult = gt
    boxes = boxes.detach().to("cpu", torch.float64).reshape(-1, 5)
    gt_boxes = gt_boxes.detach().to("cpu", torch.float64).reshape(-1, 5)
    scores = scores.detach().to("cpu", torch.float64).reshape(-1)
    difficult = difficult.detach().to("cpu").reshape(-1).bool()
    if len(scores) != len(boxes):
        raise ValueError(f"image {index}: {len(boxes)} detection boxes but {len(scores)} scores")
    if len(difficult) != len(gt_boxes):
        raise ValueError(f"image {index}: {len(gt_boxes)} GT boxes but {len(difficult)} difficult flags")
    n, m = len(boxes), len(gt_boxes)
    if n and m:
        if box_type == "obb":
            ious = box_iou_rotated(boxes, gt_boxes)
        else:
            ious = _hbb_iou(obb_to_hbb(boxes), obb_to_hbb(gt_boxes))
        best_iou, best_gt = ious.max(dim=1)
        best_iou, best_gt = best_iou.numpy(), best_gt.numpy()
    else:
        best_iou, best_gt = np.full(n, -1.0), np.zeros(n, dtype=np.int64)
    scores_np = scores.numpy()
    return _Image(
        scores=scores_np,
        det_len=_lengths(boxes, box_type),
        gt_len=_lengths(gt_boxes, box_type),
        difficult=difficult.numpy(),
        best_iou=best_iou,
        best_gt=best_gt,
        order=np.argsort(-scores_np, kind="stable"),
    )


def _tp_fp(img: _Image, thr: float, rng: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """TP and FP flags of an image's detections (input order) at one IoU threshold and range."""
    n = len(img.scores)
    tp = np.zeros(n, dtype=bool)
    fp = np.zeros(n, dtype=bool)
    if n == 0:
        return tp, fp
    ignored_gt = img.difficult.copy()
    det_counts = np.ones(n, dtype=bool)  # whether an unmatched detection is an FP
    if rng is not None:
        lo, hi = rng
        ignored_gt |= (img.gt_len < lo) | (img.gt_len >= hi)
        det_counts = (img.det_len >= lo) & (img.det_len < hi)
    matched = img.best_iou >= thr
    live = matched.copy()
    live[matched] = ~ignored_gt[img.best_gt[matched]]
    # Greedy in score order: the first live detection on a GT takes it, later ones are duplicates.
    live_sorted = img.order[live[img.order]]
    _, first = np.unique(img.best_gt[live_sorted], return_index=True)
    tp[live_sorted[first]] = True
    fp[live_sorted] = True
    fp[live_sorted[first]] = False
    fp |= ~matched & det_counts
    return tp, fp


def _ap(
    images: list[_Image], tps: list[np.ndarray], fps: list[np.ndarray], num_gts: int, use_07_metric: bool
) -> float:
    if num_gts == 0:
        return math.nan
    scores = np.concatenate([im.scores for im in images])
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(np.concatenate(tps)[order])
    fp = np.cumsum(np.concatenate(fps)[order])
    recalls = tp / max(num_gts, _EPS)
    precisions = tp / np.maximum(tp + fp, _EPS)
    return average_precision(recalls, precisions, use_07_metric)


def best_f1(
    images: list[_Image], tps: list[np.ndarray], fps: list[np.ndarray], num_gts: int
) -> tuple[float, float, float, float]:
    """``(f1, score_thr, precision, recall)`` of the score threshold with the best F1.

    Only thresholds between distinct scores are candidates (a threshold keeps every detection of a
    tied score or none); NaN everywhere without GT or detections.
    """
    scores = np.concatenate([im.scores for im in images]) if images else np.zeros(0)
    if num_gts == 0 or len(scores) == 0:
        return math.nan, math.nan, math.nan, math.nan
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    tp = np.cumsum(np.concatenate(tps)[order])
    fp = np.cumsum(np.concatenate(fps)[order])
    ends = np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))
    recall = tp[ends] / num_gts
    precision = tp[ends] / np.maximum(tp[ends] + fp[ends], _EPS)
    f1 = 2 * precision * recall / np.maximum(precision + recall, _EPS)
    i = int(np.argmax(f1))
    return float(f1[i]), float(sorted_scores[ends[i]]), float(precision[i]), float(recall[i])


def _operating_point(
    images: list[_Image], flags: list[tuple[np.ndarray, np.ndarray]], num_gts: int, score_thr: float
) -> dict[str, float | int]:
    kept = [im.scores >= score_thr for im in images]
    tp = sum(int((f[0] & k).sum()) for f, k in zip(flags, kept))
    fp = sum(int((f[1] & k).sum()) for f, k in zip(flags, kept))
    return {
        "op_score_thr": float(score_thr),
        "op_tp": tp,
        "op_fp": fp,
        "op_precision": tp / (tp + fp) if tp + fp else math.nan,
        "op_recall": tp / num_gts if num_gts else math.nan,
        "op_fp_per_100_images": 100.0 * fp / len(images) if images else math.nan,
    }


def evaluate(
    detections: Sequence[tuple[Tensor, Tensor]],
    ground_truths: Sequence[tuple[Tensor, Tensor]],
    box_type: Literal["obb", "hbb"] = "obb",
    iou_thrs: Sequence[float] = DEFAULT_IOU_THRS,
    use_07_metric: bool = True,
    length_ranges: Sequence[tuple[float, float]] = DEFAULT_LENGTH_RANGES,
    range_names: Sequence[str] = DEFAULT_RANGE_NAMES,
    score_thr: float | None = None,
) -> dict[str, float | int]:
    """AP of whole-image detections against whole-image GT, one class (see the module docstring).

    ``detections[i] = (boxes (N, 5), scores (N,))`` and ``ground_truths[i] = (boxes (M, 5),
    difficult (M,) bool)`` for image ``i``, all boxes ``(cx, cy, w, h, theta)`` in the same pixel
    frame. ``box_type="hbb"`` scores the axis-aligned hulls of both (the HBB task).

    ``score_thr`` (an operating point, e.g. the model's) adds what a user of that threshold gets at
    IoU 0.5: ``op_tp``, ``op_fp``, ``op_precision``, ``op_recall`` and ``op_fp_per_100_images``
    (false boxes per 100 images; on bridge-free images, every box is one).
    """
    if len(detections) != len(ground_truths):
        raise ValueError(f"{len(detections)} detection lists for {len(ground_truths)} images")
    if box_type not in ("obb", "hbb"):
        raise ValueError(f"box_type must be 'obb' or 'hbb', got {box_type!r}")
    if len(range_names) != len(length_ranges):
        raise ValueError(f"{len(length_ranges)} length ranges but {len(range_names)} names")
    if not iou_thrs:
        raise ValueError("iou_thrs is empty")
    images = [_prepare(d, g, box_type, i) for i, (d, g) in enumerate(zip(detections, ground_truths))]

    def num_gts(rng: tuple[float, float] | None) -> int:
        total = 0
        for im in images:
            real = ~im.difficult
            if rng is not None:
                real &= (im.gt_len >= rng[0]) & (im.gt_len < rng[1])
            total += int(real.sum())
        return total

    def ap_at(thr: float, rng: tuple[float, float] | None) -> float:
        flags = [_tp_fp(im, thr, rng) for im in images]
        return _ap(images, [f[0] for f in flags], [f[1] for f in flags], num_gts(rng), use_07_metric)

    thrs = [round(float(t), 6) for t in iou_thrs]  # so that 0.5 from arange and 0.5 coincide
    all_thrs = sorted(set(thrs) | {0.5, 0.75})
    ap_all = {t: ap_at(t, None) for t in all_thrs}
    result: dict[str, float | int] = {
        "mAP": float(np.mean([ap_all[t] for t in thrs])),
        "AP50": ap_all[0.5],
        "AP75": ap_all[0.75],
    }
    flags = [_tp_fp(im, 0.5, None) for im in images]
    point = best_f1(images, [f[0] for f in flags], [f[1] for f in flags], num_gts(None))
    for name, value in zip(("f1", "f1_score_thr", "f1_precision", "f1_recall"), point):
        result[name] = value
    if score_thr is not None:
        result.update(_operating_point(images, flags, num_gts(None), score_thr))
    for t in all_thrs:
        result[f"AP{round(t * 100)}"] = ap_all[t]
    for name, rng in zip(range_names, length_ranges):
        lo_hi = (float(rng[0]), float(rng[1]))
        result[f"ap_{name}"] = float(np.mean([ap_at(t, lo_hi) for t in thrs]))
        result[f"num_gts_{name}"] = num_gts(lo_hi)
    result["num_images"] = len(images)
    result["num_dets"] = int(sum(len(im.scores) for im in images))
    result["num_gts"] = num_gts(None)
    result["num_difficult"] = int(sum(int(im.difficult.sum()) for im in images))
    return result
