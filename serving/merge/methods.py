"""Scene-wide merging of window detections from all pyramid levels.

Two methods, chosen by :class:`MergeConfig` ``method``:

* ``"authors"``: the released HBD-Net merge (method digest §7): per level, rotated NMS 0.4 over all
  windows of the level; then one class-agnostic rotated NMS 0.5 over all levels. Its known failure:
  a full-resolution fragment of a long bridge has a small IoU with the whole-bridge box found at a
  coarse level, and two fragments from neighbouring windows overlap only in the 200 px overlap, so
  fragments survive next to (or instead of) the whole bridge.
* ``"holistic"`` (default): treat boxes that continue one another along a common direction as parts
  of one bridge and fuse them, then suppress what is left over as duplicates.

Holistic merge, in two passes over the detections in scene pixels:

1. **Fusion.** Two boxes of the same class are parts of one bridge (``continues``) when, in the
   frame of the longer one ``L`` (axis ``u``, width ``h_L``) and with ``S`` the shorter:

   * their directions differ by at most ``angle_tol_deg``;
   * their widths differ by at most ``width_tol * max(h_S, h_L)`` plus half a level pixel of each;
   * their intervals along ``u`` overlap, or leave a gap of at most ``gap_tol * min(h_S, h_L)``;
   * over their common interval (or the gap), the centre line of ``S`` stays within
     ``lateral_tol * max(h_S, h_L)`` of the centre line of ``L``;
   * they do not merely meet end to end with a real end each: a box end that is not at its window's
     border (:func:`serving.merge.fuse.end_cuts`) is the end of a bridge, and a bridge does not go
     on past its own end (this keeps two bridges in a row apart);
   * ``S`` is not a stub of ``L`` (below).

   Fragments of one bridge from neighbouring windows meet this (they share the overlap strip and
   meet with cut ends), a coarse whole-bridge box meets it with every fine fragment inside it, and
   duplicates from overlapping windows meet it. Two parallel decks side by side do not: their
   centre lines are at least ``(h_1 + h_2) / 2`` apart, more than half the wider width. A crossing
   road or bridge at another angle does not either. Accepted pairs are joined by union-find
   (transitively: a chain of fragments across many windows becomes one group).

   A **stub** is a box cut by its window's border that is about as long as ``L``'s deck is wide
   (``stub_min`` to ``stub_ratio`` widths) and lies on the deck near an end of ``L``: the piece of a
   bridge's end left in the next window, whose minimum-area rectangle may lie across the deck. Its
   direction means nothing, so it is judged by position only; a group made only of stubs of another
   group joins that group, but a stub never links two groups (a piece where two bridges cross
   cannot fuse them).

   Each group becomes one box (:func:`serving.merge.fuse.fuse_groups`): direction from all members
   weighted by their length in level pixels, each end from the finest level that reaches it (coarse
   levels give completeness, fine levels precision), width and lateral position from the finest
   level, the best member's score, the coarsest member's level.
2. **Suppression.** On the fused boxes, greedy NMS in score order where a box is suppressed by a
   kept box with a higher score when their rotated IoU exceeds ``duplicate_iou`` (ordinary
   duplicates, including near-square boxes whose angle is ambiguous) or when at least
   ``contain_iof`` of the lower-scored box lies inside the other (cut-off pieces whose rectangle
   took another direction than the bridge). A box shorter than half the other's width is left
   alone (not a piece of that bridge).

Both passes find neighbours through a grid (:mod:`serving.merge.pairs`), never a dense N x N matrix.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from hbdnet.boxes.nms import batched_nms_rotated, nms_rotated
from serving.merge.config import MergeConfig
from serving.merge.fuse import end_cuts, fuse_groups
from serving.merge.pairs import PAIR_CHUNK, chunk_slices, connected_components
from serving.merge.relations import attach_stub_groups, cut_margin, neighbour_pairs, relations
from serving.merge.suppress import suppress
from serving.engine.window_detections import SceneDetections, WindowDetections, to_scene

__all__ = ["MergeConfig", "MergedDetections", "merge", "merge_authors", "merge_holistic"]


@dataclass(frozen=True)
class MergedDetections:
    """Final scene detections, sorted by descending score.

    ``boxes`` ``(M, 5)`` le90 scene pixels; ``scores``, ``labels``; ``levels`` the pyramid level that
    produced the box (for a fused box, its coarsest member: the level that saw most of the bridge);
    ``members`` how many window detections were fused into it (1 when none).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    levels: np.ndarray
    members: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def merge(
    dets: SceneDetections | Sequence[WindowDetections], config: MergeConfig = MergeConfig()
) -> MergedDetections:
    """The engine's single entry: merge window detections (or their scene mapping) into scene boxes."""
    if not isinstance(dets, SceneDetections):
        dets = to_scene(dets)
    with _torch_threads(1):
        if config.method == "authors":
            keep = merge_authors(dets.boxes, dets.scores, dets.levels, dets.labels, config)
            return MergedDetections(
                dets.boxes[keep], dets.scores[keep], dets.labels[keep], dets.levels[keep],
                np.ones(len(keep), dtype=np.int64),
            )
        if config.method == "holistic":
            return merge_holistic(dets, config)
    raise ValueError(f"unknown merge method {config.method!r}")


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run torch ops with ``n`` intra-op threads, then restore the setting.

    The merge's tensor ops are many and small; on a busy 2-core host the intra-op pool made
    ``box_iou_rotated`` on 20,000 pairs 50 times slower than one thread.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def merge_authors(
    boxes: np.ndarray,
    scores: np.ndarray,
    levels: np.ndarray,
    labels: np.ndarray,
    config: MergeConfig = MergeConfig(),
) -> np.ndarray:
    """Indices kept by the authors' merge, in descending score order."""
    if len(scores) == 0:
        return np.zeros(0, dtype=np.int64)
    b = torch.from_numpy(np.asarray(boxes, dtype=np.float64))
    s = torch.from_numpy(np.asarray(scores, dtype=np.float64))
    lab, lev = torch.from_numpy(np.asarray(labels, dtype=np.int64)), np.asarray(levels)
    survivors = []
    for level in np.unique(lev):
        idx = torch.from_numpy(np.flatnonzero(lev == level))
        survivors.append(idx[batched_nms_rotated(b[idx], s[idx], lab[idx], config.level_nms_iou)])
    cand = torch.cat(survivors)
    keep = cand[nms_rotated(b[cand], s[cand], config.final_nms_iou)]
    return keep.numpy().astype(np.int64)


def merge_holistic(dets: SceneDetections, config: MergeConfig = MergeConfig()) -> MergedDetections:
    """Fuse fragments and levels of each bridge into one box, then suppress duplicates (module doc)."""
    if len(dets) == 0:
        none = np.zeros(0, dtype=np.int64)
        return MergedDetections(np.zeros((0, 5)), np.zeros(0), none, none, none)
    boxes = np.asarray(dets.boxes, dtype=np.float64).reshape(-1, 5)
    scores = np.asarray(dets.scores, dtype=np.float64)
    labels = np.asarray(dets.labels, dtype=np.int64)
    levels = np.asarray(dets.levels, dtype=np.int64)
    bounds = None if dets.window_bounds is None else np.asarray(dets.window_bounds, dtype=np.float64)
    group = _bridge_groups(boxes, levels, labels, bounds, config)
    fused = _fuse(boxes, scores, labels, levels, bounds, group, config)
    keep = suppress(fused.boxes, fused.scores, fused.labels, config)
    return MergedDetections(fused.boxes[keep], fused.scores[keep], fused.labels[keep], fused.levels[keep],
                            fused.members[keep])


def _bridge_groups(
    boxes: np.ndarray, levels: np.ndarray, labels: np.ndarray, bounds: np.ndarray | None, config: MergeConfig
) -> np.ndarray:
    """Group index ``(N,)`` in ``[0, G)`` of every detection: the parts of one bridge share one."""
    n = len(boxes)
    scales = np.exp2(levels.astype(np.float64))
    if bounds is None:  # unknown windows: no end is known to be real, any box may be a cut piece
        cut = (np.ones(n, dtype=bool), np.ones(n, dtype=bool))
        touching = np.ones(n, dtype=bool)
    else:
        axis_x, axis_y = np.cos(boxes[:, 4]), np.sin(boxes[:, 4])
        cut = end_cuts(boxes, axis_x, axis_y, bounds, cut_margin(boxes, scales, config))
        touching = cut[0] | cut[1]
    longer, shorter = neighbour_pairs(boxes, scales, labels, touching, config)
    continues = np.zeros(len(longer), dtype=bool)
    stub = np.zeros(len(longer), dtype=bool)
    for part in chunk_slices(len(longer), PAIR_CHUNK):  # bounded temporaries however dense the boxes
        continues[part], stub[part] = relations(boxes, scales, cut, touching, longer[part], shorter[part], config)
    group = connected_components(n, longer[continues], shorter[continues])
    group = attach_stub_groups(group, boxes, longer[stub], shorter[stub])
    return np.unique(group, return_inverse=True)[1]


def _fuse(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    levels: np.ndarray,
    bounds: np.ndarray | None,
    group: np.ndarray,
    config: MergeConfig,
) -> MergedDetections:
    """One box per group (unsorted): single detections as they are, larger groups fused."""
    size = np.bincount(group)
    alone = size[group] == 1
    ones = np.ones(int(alone.sum()), dtype=np.int64)
    out = [(boxes[alone], scores[alone], labels[alone], levels[alone], ones)]
    idx = np.flatnonzero(~alone)
    if len(idx):
        sub_group = np.unique(group[idx], return_inverse=True)[1]
        n_groups = int(sub_group.max()) + 1
        scales = np.exp2(levels[idx].astype(np.float64))
        sub_bounds = None if bounds is None else bounds[idx]
        fb, fs, fl = fuse_groups(
            boxes[idx], scores[idx], levels[idx], sub_group, n_groups, sub_bounds,
            cut_margin(boxes[idx], scales, config), config.end_tol,
        )
        # The label of a group is that of its best member (groups are single-label unless agnostic).
        order = np.lexsort((-scores[idx], sub_group))
        best = idx[order[np.searchsorted(sub_group[order], np.arange(n_groups))]]
        out.append((fb, fs, labels[best], fl, np.bincount(sub_group, minlength=n_groups)))
    return MergedDetections(*(np.concatenate(parts) for parts in zip(*out)))
