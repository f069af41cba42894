import math

import numpy as np
import pytest
import torch

from hbdnet.boxes.iou import box_iou_rotated
from hbdnet.evaluation.rotated_map import average_precision, evaluate

NO_DIFF = torch.zeros(0, dtype=torch.bool)


def box(cx, cy, w, h, t=0.0):
    return [float(cx), float(cy), float(w), float(h), float(t)]


def gts(*rows, difficult=None):
    b = torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)
    d = torch.zeros(len(b), dtype=torch.bool) if difficult is None else torch.tensor(difficult)
    return b, d


def dets(*rows_scores):
    rows = [r for r, _ in rows_scores]
    scores = [s for _, s in rows_scores]
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 5), torch.tensor(scores, dtype=torch.float32)


# Three well separated GTs; dets either hit one exactly or miss everything.
G = [box(50, 50, 40, 10), box(200, 200, 40, 10), box(400, 100, 40, 10)]
MISS = box(900, 900, 40, 10)


def test_average_precision_by_hand():
    # TP, FP, TP, FP over 3 GTs: recall 1/3, 1/3, 2/3, 2/3; precision 1, 1/2, 2/3, 1/2.
    rec = np.array([1, 1, 2, 2]) / 3
    prec = np.array([1, 1 / 2, 2 / 3, 1 / 2])
    # 11-point: t = 0..0.3 -> 1, t = 0.4..0.6 -> 2/3, t = 0.7..1 -> 0.
    assert average_precision(rec, prec, use_07_metric=True) == pytest.approx(6 / 11)
    # Area: 1/3 * 1 + 1/3 * 2/3 + 1/3 * 0.
    assert average_precision(rec, prec, use_07_metric=False) == pytest.approx(5 / 9)


@pytest.mark.parametrize("use_07, expected", [(True, 6 / 11), (False, 5 / 9)])
def test_three_gts_four_dets(use_07, expected):
    d = dets((G[0], 0.9), (MISS, 0.8), (G[1], 0.7), (box(700, 50, 40, 10), 0.6))
    r = evaluate([d], [gts(*G)], use_07_metric=use_07)
    assert r["AP50"] == pytest.approx(expected)
    assert r["AP75"] == pytest.approx(expected) and r["mAP"] == pytest.approx(expected)  # exact hits
    assert (r["num_gts"], r["num_dets"], r["num_images"]) == (3, 4, 1)


def test_order_is_by_score_not_input():
    d = dets((box(700, 50, 40, 10), 0.6), (G[1], 0.7), (MISS, 0.8), (G[0], 0.9))
    assert evaluate([d], [gts(*G)])["AP50"] == pytest.approx(6 / 11)


def test_duplicate_is_a_false_positive():
    # TP, duplicate (FP), TP, TP: recall 1/3, 1/3, 2/3, 1; precision 1, 1/2, 2/3, 3/4.
    d = dets((G[0], 0.9), (box(50, 50, 40, 11), 0.85), (G[1], 0.8), (G[2], 0.7))
    r = evaluate([d], [gts(*G)], use_07_metric=False)
    assert r["AP50"] == pytest.approx(1 / 3 + 1 / 3 * 3 / 4 + 1 / 3 * 3 / 4)


def test_difficult_gt_is_neither_tp_nor_fp():
    # The det on the difficult GT is ignored: TP, (ignored), TP over 2 counted GTs -> AP 1.
    d = dets((G[0], 0.9), (G[1], 0.8), (G[2], 0.7))
    r = evaluate([d], [gts(*G, difficult=[False, True, False])])
    assert r["AP50"] == pytest.approx(1.0)
    assert (r["num_gts"], r["num_difficult"]) == (2, 1)
    # Without the flag it is a TP like the others: still 1, over 3 GTs.
    assert evaluate([d], [gts(*G)])["num_gts"] == 3


def test_iou_thresholds_and_map():
    # Same centre and width; height 6.2 of 10 -> IoU 0.62: TP at 0.50, 0.55, 0.60 only.
    g = gts(box(50, 50, 40, 10))
    d = dets((box(50, 50, 40, 6.2), 0.9))
    r = evaluate([d], [g])
    assert (r["AP50"], r["AP55"], r["AP60"], r["AP65"], r["AP75"]) == (1.0, 1.0, 1.0, 0.0, 0.0)
    assert r["mAP"] == pytest.approx(0.3)
    assert r["ap_short"] == pytest.approx(0.3)  # length 40
    assert math.isnan(r["ap_huge"])


def test_length_ranges():
    # GT lengths: 40 (short), 100 (middle), 300 (large); no huge one.
    g = gts(box(50, 50, 40, 10), box(300, 300, 100, 10), box(800, 800, 300, 20))
    d = dets(
        (box(50, 50, 40, 10), 0.9),  # hits the short GT
        (box(300, 300, 100, 10), 0.8),  # hits the middle GT
        (box(2000, 2000, 120, 10), 0.7),  # misses; length 120: an FP for "middle" only
        (box(3000, 3000, 1000, 10), 0.6),  # misses; length 1000: an FP for "huge" only
    )
    r = evaluate([d], [g])
    assert r["ap_short"] == pytest.approx(1.0)  # the middle hit is ignored there, the misses are not short
    # middle: TP, FP -> recall 1, 1; precision 1, 1/2 -> 11-point AP 1.
    assert r["ap_middle"] == pytest.approx(1.0)
    assert r["ap_large"] == pytest.approx(0.0)  # one GT, never found
    assert math.isnan(r["ap_huge"])  # no GT: undefined
    assert (r["num_gts_short"], r["num_gts_middle"], r["num_gts_large"], r["num_gts_huge"]) == (1, 1, 1, 0)
    # Area AP shows the middle FP after the TP costs nothing, one before it does.
    d2 = dets((box(2000, 2000, 120, 10), 0.95), (box(300, 300, 100, 10), 0.8))
    r2 = evaluate([d2], [g], use_07_metric=False)
    assert r2["ap_middle"] == pytest.approx(0.5)
    assert r2["ap_short"] == pytest.approx(0.0)  # the short GT is missed; no short FP either


def test_range_edges_are_half_open():
    g = gts(box(0, 0, 50, 10))  # length exactly 50: "middle", not "short"
    r = evaluate([dets((box(0, 0, 50, 10), 0.9))], [g])
    assert (r["num_gts_short"], r["num_gts_middle"]) == (0, 1)
    assert r["ap_middle"] == 1.0


def test_best_f1_operating_point():
    # TP .9, FP .8, TP .7, TP .6 (duplicate-free), FP .5 over 3 GTs: F1 after each = 1/2, 2/5, 2/3, 6/7, 3/4.
    d = dets((G[0], 0.9), (MISS, 0.8), (G[1], 0.7), (G[2], 0.6), (box(700, 50, 40, 10), 0.5))
    r = evaluate([d], [gts(*G)])
    assert r["f1"] == pytest.approx(6 / 7) and r["f1_score_thr"] == pytest.approx(0.6)
    assert (r["f1_precision"], r["f1_recall"]) == (pytest.approx(3 / 4), pytest.approx(1.0))


def test_best_f1_keeps_tied_scores_together():
    # A threshold keeps all of a tied score or none: TP and FP at .8 together, never the TP alone.
    d = dets((G[0], 0.9), (G[1], 0.8), (MISS, 0.8))
    r = evaluate([d], [gts(*G[:2])])
    assert r["f1"] == pytest.approx(0.8) and r["f1_score_thr"] == pytest.approx(0.8)  # p 2/3, r 1
    d = dets((G[0], 0.9), (MISS, 0.8), (MISS, 0.8), (G[1], 0.8))
    assert evaluate([d], [gts(*G[:2])])["f1_score_thr"] == pytest.approx(0.9)  # F1 2/3 at .9 and at .8: the higher


def test_no_detections_and_no_gts():
    r = evaluate([dets()], [gts(*G)])
    assert r["AP50"] == 0.0 and r["mAP"] == 0.0 and r["num_dets"] == 0
    assert math.isnan(r["f1"]) and math.isnan(r["f1_score_thr"])
    r = evaluate([dets((G[0], 0.9))], [gts()])
    assert math.isnan(r["AP50"]) and math.isnan(r["mAP"]) and r["num_gts"] == 0
    r = evaluate([], [])
    assert math.isnan(r["mAP"]) and r["num_images"] == 0


def test_images_are_pooled_by_score():
    # Image A: a miss scored 0.9; image B: a hit scored 0.8 -> FP then TP over 2 GTs.
    a = (dets((MISS, 0.9)), gts(G[0]))
    b = (dets((G[1], 0.8)), gts(G[1]))
    r = evaluate([a[0], b[0]], [a[1], b[1]], use_07_metric=False)
    # recall 0, 1/2; precision 0, 1/2 -> 1/2 * 1/2.
    assert r["AP50"] == pytest.approx(0.25)


def test_hbb_uses_hulls():
    # A 45-degree det whose hull equals the GT's hull: perfect in HBB, poor in OBB.
    g = gts(box(100, 100, 60, 60, math.pi / 4))
    d = dets((box(100, 100, 60 * math.sqrt(2), 60 * math.sqrt(2), 0.0), 0.9))
    assert evaluate([d], [g], box_type="hbb")["AP95"] == pytest.approx(1.0)
    assert evaluate([d], [g], box_type="obb")["AP50"] == 1.0  # IoU 0.5 exactly (1/2 of the area)
    assert evaluate([d], [g], box_type="obb")["AP55"] == 0.0


def test_input_validation():
    with pytest.raises(ValueError, match="images"):
        evaluate([dets()], [])
    with pytest.raises(ValueError, match="scores"):
        evaluate([(torch.zeros(2, 5), torch.zeros(1))], [gts()])
    with pytest.raises(ValueError, match="box_type"):
        evaluate([dets()], [gts()], box_type="poly")


# --- the vectorised greedy against a literal transcription of tpfp_default -------------------


def reference_tpfp(det_b, scores, gt_b, difficult, thr, rng, ious):
    n, m = len(det_b), len(gt_b)
    tp, fp = np.zeros(n, bool), np.zeros(n, bool)
    det_len = det_b[:, 2:4].abs().amax(1).numpy() if n else np.zeros(0)
    gt_len = gt_b[:, 2:4].abs().amax(1).numpy() if m else np.zeros(0)
    if m == 0:
        for i in range(n):
            fp[i] = rng is None or rng[0] <= det_len[i] < rng[1]
        return tp, fp
    covered = np.zeros(m, bool)
    out = np.zeros(m, bool) if rng is None else (gt_len < rng[0]) | (gt_len >= rng[1])
    for i in np.argsort(-scores.numpy(), kind="stable"):
        j = ious[i].argmax()
        if ious[i, j] >= thr:
            if not (difficult[j] or out[j]):
                if not covered[j]:
                    covered[j] = True
                    tp[i] = True
                else:
                    fp[i] = True
        elif rng is None or rng[0] <= det_len[i] < rng[1]:
            fp[i] = True
    return tp, fp


def reference_ap(images, ious, thr, rng, use_07):
    tps, fps, scores, n_gt = [], [], [], 0
    for ((db, sc), (gb, dif)), iou in zip(images, ious):
        tp, fp = reference_tpfp(db, sc, gb, dif.numpy(), thr, rng, iou)
        tps.append(tp), fps.append(fp), scores.append(sc.numpy())
        lens = gb[:, 2:4].amax(1).numpy() if len(gb) else np.zeros(0)
        inr = np.ones(len(gb), bool) if rng is None else (lens >= rng[0]) & (lens < rng[1])
        n_gt += int((~dif.numpy() & inr).sum())
    order = np.argsort(-np.concatenate(scores), kind="stable")
    tp = np.cumsum(np.concatenate(tps)[order])
    fp = np.cumsum(np.concatenate(fps)[order])
    eps = np.finfo(np.float32).eps
    if n_gt == 0:
        return math.nan
    return average_precision(tp / max(n_gt, eps), tp / np.maximum(tp + fp, eps), use_07)


def random_scene(seed):
    g = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(4):
        m = int(torch.randint(0, 8, (), generator=g))
        gt = torch.cat(
            [torch.rand(m, 2, generator=g) * 400, torch.rand(m, 1, generator=g) * 300 + 10,
             torch.rand(m, 1, generator=g) * 20 + 4, (torch.rand(m, 1, generator=g) - 0.5) * math.pi], 1
        )
        dif = torch.rand(m, generator=g) < 0.2
        # Detections: jittered copies of GTs (some twice) plus random boxes.
        k = int(torch.randint(0, 12, (), generator=g))
        src = gt[torch.randint(0, max(m, 1), (k,), generator=g)] if m else torch.zeros((0, 5))
        jitter = torch.cat([torch.randn(len(src), 2, generator=g) * 3, torch.randn(len(src), 2, generator=g) * 2,
                            torch.randn(len(src), 1, generator=g) * 0.05], 1)
        rand = torch.cat(
            [torch.rand(3, 2, generator=g) * 400, torch.rand(3, 1, generator=g) * 900 + 5,
             torch.rand(3, 1, generator=g) * 20 + 4, torch.zeros(3, 1)], 1
        )
        det = torch.cat([src + jitter, rand])
        det[:, 2:4] = det[:, 2:4].abs() + 1
        images.append(((det, torch.rand(len(det), generator=g)), (gt, dif)))
    return images


@pytest.mark.parametrize("seed", range(6))
def test_matches_a_literal_tpfp_default(seed):
    images = random_scene(seed)
    ious = [box_iou_rotated(d[0].double(), g[0].double()).numpy() for d, g in images]
    ranges = ((0, 50), (50, 200), (200, 800), (800, math.inf))
    for use_07 in (True, False):
        r = evaluate([i[0] for i in images], [i[1] for i in images], use_07_metric=use_07)
        thrs = [round(0.5 + 0.05 * i, 2) for i in range(10)]
        expect_map = np.mean([reference_ap(images, ious, t, None, use_07) for t in thrs])
        assert r["mAP"] == pytest.approx(expect_map, nan_ok=True)
        assert r["AP75"] == pytest.approx(reference_ap(images, ious, 0.75, None, use_07), nan_ok=True)
        for name, rng in zip(("short", "middle", "large", "huge"), ranges):
            expect = np.mean([reference_ap(images, ious, t, rng, use_07) for t in thrs])
            assert r[f"ap_{name}"] == pytest.approx(expect, nan_ok=True), name


def test_operating_point_counts_what_a_user_of_the_threshold_sees():
    # Image 1: a hit (0.9), its duplicate (0.8), a miss (0.3); image 2 has no bridge and one box (0.6).
    detections = [dets((G[0], 0.9), (G[0], 0.8), (MISS, 0.3)), dets((MISS, 0.6))]
    truths = [gts(G[0], G[1]), gts()]
    r = evaluate(detections, truths, score_thr=0.5)
    assert (r["op_score_thr"], r["op_tp"], r["op_fp"]) == (0.5, 1, 2)
    assert r["op_precision"] == pytest.approx(1 / 3) and r["op_recall"] == pytest.approx(1 / 2)
    assert r["op_fp_per_100_images"] == pytest.approx(100.0)
    assert "op_fp" not in evaluate(detections, truths)
    # Bridge-free images only: every kept box is a false one, recall has no meaning.
    negatives = evaluate([dets((MISS, 0.6), (G[0], 0.4)), dets()], [gts(), gts()], score_thr=0.5)
    assert (negatives["op_fp"], negatives["op_fp_per_100_images"]) == (1, 50.0)
    assert math.isnan(negatives["op_recall"])
