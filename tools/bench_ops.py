"""Benchmark the plain-PyTorch rotated IoU and NMS against shapely, on the CPU.

    python tools/bench_ops.py [--iou-n 2000] [--nms-n 20000] [--repeat 5] [--threads 1]

1. IoU matrix of ``n x n`` scene-like boxes (centres over 4000 px, sides 10–600 px, any angle):
   ``box_iou_rotated`` against shapely 2 with an STRtree (bounding-box candidates, then vectorised
   ``shapely.intersection`` over the candidate pairs only; the rest of the matrix is 0).
2. Rotated NMS (IoU 0.4, the detector's test threshold) of ``--nms-n`` detections: objects shaped
   like bridges (length 10–600 px log-uniform, length / width 1.5–6) over an 8000 px scene, each
   detected 1–9 times with jitter, plus 10 % stray boxes. Two shapely references, both greedy with
   an STRtree: "bulk" (all candidate pairs at once, vectorised intersections, then the greedy pass)
   and "lazy" (the same bulk query, then box by box, IoU only between each kept box and its
   candidates still standing). The faster one is the reference. All three must keep the same
   boxes in the same order.

Times are wall-clock, the best of ``--repeat`` runs (shapely: of ``min(repeat, 2)``). torch runs on
one thread by default, like shapely (``--threads 0`` keeps torch's own default). The last line is
``nms_speedup_vs_shapely=<x>``.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Callable

import numpy as np
import shapely
import torch

from hbdnet.boxes.convention import obb_to_poly
from hbdnet.boxes.iou import box_iou_rotated
from hbdnet.boxes.nms import nms_rotated

NMS_IOU = 0.4


def best_time(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    best, out = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def iou_boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 2, generator=g) * 4000
    wh = 10 + torch.rand(n, 2, generator=g) * 590
    a = (torch.rand(n, 1, generator=g) - 0.5) * math.pi
    return torch.cat([c, wh, a], 1)


def scene_detections(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` detections: jittered repeats of bridge-like objects (90 %) and stray boxes (10 %)."""
    g = torch.Generator().manual_seed(seed)
    n_obj = 9 * n // 50  # detected 5 times on average
    length = 10 * torch.exp(torch.rand(n_obj, generator=g) * math.log(60))
    width = length / (1.5 + 4.5 * torch.rand(n_obj, generator=g))
    obj = torch.stack(
        [
            torch.rand(n_obj, generator=g) * 8000,
            torch.rand(n_obj, generator=g) * 8000,
            length,
            width,
            (torch.rand(n_obj, generator=g) - 0.5) * math.pi,
        ],
        1,
    )
    repeats = torch.randint(1, 10, (n_obj,), generator=g)
    det = obj.repeat_interleave(repeats, 0)
    j = torch.randn(det.shape[0], 5, generator=g)
    # Centres and lengths jitter with the length, widths with the width; angles by ~5 degrees.
    length, width = det[:, 2], det[:, 3]
    det = det + torch.stack(
        [0.08 * length * j[:, 0], 0.08 * length * j[:, 1], 0.1 * length * j[:, 2], 0.1 * width * j[:, 3], 0.08 * j[:, 4]],
        1,
    )
    det[:, 2:4] = det[:, 2:4].abs().clamp(min=2)
    det = det[: n - n // 10]
    n_stray = n - det.shape[0]
    stray = torch.cat(
        [
            torch.rand(n_stray, 2, generator=g) * 8000,
            10 + torch.rand(n_stray, 2, generator=g) * 200,
            (torch.rand(n_stray, 1, generator=g) - 0.5) * math.pi,
        ],
        1,
    )
    boxes = torch.cat([det, stray])
    scores = torch.rand(boxes.shape[0], generator=g)
    return boxes, scores


def polygons(boxes: torch.Tensor) -> np.ndarray:
    return shapely.polygons(obb_to_poly(boxes.double()).reshape(-1, 4, 2).numpy())


def shapely_iou_matrix(b1: torch.Tensor, b2: torch.Tensor) -> np.ndarray:
    p1, p2 = polygons(b1), polygons(b2)
    a1, a2 = shapely.area(p1), shapely.area(p2)
    i, j = shapely.STRtree(p2).query(p1)
    inter = shapely.area(shapely.intersection(p1[i], p2[j]))
    out = np.zeros((len(p1), len(p2)))
    out[i, j] = inter / (a1[i] + a2[j] - inter)
    return out


def shapely_nms_bulk(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> np.ndarray:
    polys = polygons(boxes)
    area = shapely.area(polys)
    order = torch.sort(scores, descending=True, stable=True).indices.numpy()
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    i, j = shapely.STRtree(polys).query(polys)
    first = rank[i] < rank[j]
    i, j = i[first], j[first]
    inter = shapely.area(shapely.intersection(polys[i], polys[j]))
    hit = inter / (area[i] + area[j] - inter) > thr
    src, dst = rank[i[hit]], rank[j[hit]]
    by_src = np.argsort(src, kind="stable")
    src, dst = src[by_src].tolist(), dst[by_src].tolist()
    suppressed = [False] * len(order)
    for a, b in zip(src, dst):
        if not suppressed[a]:
            suppressed[b] = True
    return order[~np.asarray(suppressed)]


def shapely_nms_lazy(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> np.ndarray:
    polys = polygons(boxes)
    area = shapely.area(polys)
    order = torch.sort(scores, descending=True, stable=True).indices.numpy()
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    # All candidate pairs from one bulk tree query, grouped by the higher-ranked box.
    i, j = shapely.STRtree(polys).query(polys)
    first = rank[i] < rank[j]
    i, j = i[first], j[first]
    by_i = np.argsort(i, kind="stable")
    i, j = i[by_i], j[by_i]
    start = np.searchsorted(i, np.arange(len(polys) + 1))
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for a in order:
        if suppressed[a]:
            continue
        keep.append(a)
        cand = j[start[a] : start[a + 1]]
        cand = cand[~suppressed[cand]]
        if cand.size:
            inter = shapely.area(shapely.intersection(polys[a], polys[cand]))
            suppressed[cand[inter / (area[a] + area[cand] - inter) > thr]] = True
    return np.asarray(keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iou-n", type=int, default=2000)
    parser.add_argument("--nms-n", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; shapely {shapely.__version__}")

    b1, b2 = iou_boxes(args.iou_n, 0), iou_boxes(args.iou_n, 1)
    box_iou_rotated(b1[:64], b2[:64])  # warm-up
    t_ours, ours = best_time(lambda: box_iou_rotated(b1, b2), args.repeat)
    t_ref, ref = best_time(lambda: shapely_iou_matrix(b1, b2), min(args.repeat, 2))
    err = float(np.abs(ours.double().numpy() - ref).max())
    print(
        f"iou matrix {args.iou_n}x{args.iou_n} ({int((ref > 0).sum())} overlapping pairs): "
        f"ours {t_ours * 1e3:.1f} ms, shapely+STRtree {t_ref * 1e3:.1f} ms, "
        f"speedup {t_ref / t_ours:.1f}x, max |diff| {err:.2e}"
    )

    boxes, scores = scene_detections(args.nms_n, 2)
    nms_rotated(boxes[:64], scores[:64], NMS_IOU)  # warm-up
    t_ours, keep = best_time(lambda: nms_rotated(boxes, scores, NMS_IOU), args.repeat)
    shapely_repeat = min(args.repeat, 2)
    t_bulk, keep_bulk = best_time(lambda: shapely_nms_bulk(boxes, scores, NMS_IOU), shapely_repeat)
    t_lazy, keep_lazy = best_time(lambda: shapely_nms_lazy(boxes, scores, NMS_IOU), shapely_repeat)
    keep = keep.numpy()
    same = np.array_equal(keep, keep_bulk) and np.array_equal(keep, keep_lazy)
    t_ref = min(t_bulk, t_lazy)
    print(
        f"nms_rotated {boxes.shape[0]} boxes at IoU {NMS_IOU}: kept {keep.size}; ours {t_ours * 1e3:.1f} ms, "
        f"shapely bulk {t_bulk * 1e3:.1f} ms, shapely lazy {t_lazy * 1e3:.1f} ms"
    )
    print(f"same keep set and order as shapely: {same}")
    print(f"nms_speedup_vs_shapely={t_ref / t_ours:.1f}")


if __name__ == "__main__":
    main()
