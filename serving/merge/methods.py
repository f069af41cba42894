"""Scene-wide merging of window detections from all pyramid levels.

Two methods, chosen by :class:`MergeConfig` ``method``:

* ``"authors"``: the released HBD-Net merge (method digest §7): per level, rotated NMS 0.4 over all
  windows of the level; then one class-agnostic rotated NMS 0.5 over all levels. Its known failure:
  a full-resolution fragment of a long bridge has a small IoU with the whole-bridge box found at a
  coarse level, and two fragments from neighbouring windows overlap only in the 200 px overlap, so
  fragments survive next to (or instead of) the whole bridge.
* ``"holistic"`` (default): treat boxes that continue one another along a common direction as parts
  of one bridge and fuse them, then suppress what is left over as duplicates.

Holistic merge, over the detections in scene pixels. Every box carries its **precision**: a box
from pyramid level ``k`` was measured on an image ``2**k`` times coarser than the scene, so each of
its edges is uncertain by ``edge_error`` pixels of its level, ``sigma = edge_error * 2**k`` scene
pixels (its ends also by ``end_frac`` of its length). Every tolerance below is a factor times the
sigmas of the two boxes compared, never a fraction of a box's width: two full-resolution boxes are
compared to within a few pixels, a 1/16 box to within a hundred. **Fine levels decide geometry,
coarse levels extent and completeness.** And every box carries the **evidence of its window**: an
end is a *cut* only where one of its corners lies within ``cut_margin`` pixels of its level from the
border of the window it came from (or beyond it), a border that the box heads out through
(:func:`serving.merge.fuse.end_cuts`; a sliver of a deck running beside the window's edge is not cut
by that edge, nor by one it runs along within 5 degrees). Any other end is a *real* end: the bridge
ends there. The window of every detection is known (``WindowDetections.window``, mapped to scene
pixels as ``SceneDetections.window_bounds``); detections without window bounds have no known real
end: every end counts as a cut in the relations, and fused ends come from the finest level that
reaches the outermost.

1. **Relations.** Two boxes of the same class, ``L`` the longer (axis ``u``) and ``S`` the shorter,
   *continue* one another (:func:`serving.merge.relations.relations`) when:

   * their directions differ by at most ``angle_base_deg`` plus each box's own angle uncertainty
     (``atan(2 lateral_k sigma / length)``: a short box's angle says little), at most ``angle_tol_deg``;
   * over their common interval along ``u`` (or the gap), the centre line of ``S`` stays within
     ``lateral_k * (sigma_L + sigma_S)`` of the centre line of ``L``;
   * their widths differ by at most ``width_tol`` of the wider plus ``2 (sigma_L + sigma_S)``;
   * their extents agree: neither goes on past a real end of the other by more than
     ``end_k`` times their end sigmas, and a gap between them is allowed only between two cut ends
     and only as wide as ``end_k * (sigma_L + sigma_S)``. Two boxes with real ends facing each other
     across a gap are two bridges, whatever the gap (two bridges in a row). Boxes that overlap
     along the deck by more than their ends' uncertainty are one deck whatever their ends say (two
     bridges in a row never overlap);
   * ``S`` is not a stub (below).

   A link is **precise** when both boxes have the same sigma and ``2 * lateral tolerance <=`` the
   wider width ``+ twin_gap``: two decks side by side are ``(h_1 + h_2) / 2 + gap`` apart, so such a
   link cannot reach from one deck to the other even with both boxes off by their whole error.
   Other links (a coarse box and a fine one, or coarse boxes of a narrow deck) could.

2. **Grouping that keeps decks apart** (:func:`_bridge_groups`). Pass 1 joins the detections linked
   by precise continuations (union-find: a chain of fragments across many windows becomes one
   group). Pass 2 turns each group into one box with the precision of its finest members and the
   cut or real state of its fused ends, and compares these over the same neighbour pairs: precise
   continuations join; an imprecise one **attaches** the less precise side (a coarse box, a group of
   coarse boxes) to the *single* partner it agrees with best (among those covering 0.9 of it, else
   half of it, the smallest lateral offset relative to the tolerance). So a wide or jittered coarse
   box that continues two parallel decks joins one of them, never both, and the members of a group
   agree on where the deck lies to within its finest members' precision, not only pairwise.

   A **stub** is a box cut by its window's border that is about as long as ``L``'s deck is wide
   (``stub_min`` to ``stub_ratio`` widths) and lies on the deck near an end of an at least as
   precise ``L``: the piece of a bridge's end left in the next window, whose minimum-area rectangle
   may lie across the deck. Its direction means nothing, so it is judged by position only; a group
   made only of stubs of another group joins that group, but a stub never links two groups.

3. **Fusion** (:func:`serving.merge.fuse.fuse_groups`): each group becomes one box. Direction from
   all members weighted by their length in level pixels; each end on its own: the bridge reaches
   at least every member's end less its uncertainty, and among the real ends that agree with that
   bound over their own and finer levels, the finest level's decide (a coarse box's end refines
   nothing a fine real end shows; it sets the end only where the finer levels are cut, which is
   completeness); width and lateral position from the finest level's elongated members (a stub
   says nothing of the deck's centre line); the best member's score; the coarsest member's level.
   Only members scoring at least ``score_ratio`` of the best one shape the box: a doubtful
   detection that joined (a false positive within a coarse box's tolerance) moves nothing.

4. **Suppression** (:func:`serving.merge.suppress.suppress`). Greedy NMS where a box is suppressed
   by a kept box that outranks it when their rotated IoU exceeds ``duplicate_iou`` (duplicates,
   near-square boxes whose angle is ambiguous) or when at least ``contain_iof`` of it lies inside the
   other (pieces), as long as it is at least half as wide as the other: a piece of a bridge is as
   wide as the bridge, while a much narrower box inside a wide one is a deck or a lane beside
   others (twin decks inside a box drawn around both stay). Rank: by score (ties: more members,
   then longer), whatever the level: on real imagery the coarse detector, which sees a whole bridge
   in one window, often scores it far above the fine detector's fragments of it, and its box is
   then the better one. A box shorter than half the other's width is left alone (not a piece of
   that bridge) unless it touches its window's border (a cut-off end piece).

Relations and suppression find neighbours through a grid (:mod:`serving.merge.pairs`), never a dense
N x N matrix, and work through pairs in bounded chunks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from hbdnet.boxes.convention import regularize_le90
from hbdnet.boxes.nms import batched_nms_rotated, nms_rotated
from serving.merge.config import MergeConfig
from serving.merge.fuse import FusedGroups, fuse_groups
from serving.merge.pairs import PAIR_CHUNK, chunk_slices, connected_components
from serving.merge.relations import (
    Evidence,
    attach_stub_groups,
    detection_evidence,
    neighbour_pairs,
    ordered_pairs,
    relations,
)
from serving.merge.suppress import suppress
from serving.merge.window_detections import SceneDetections, WindowDetections, to_scene

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
    boxes = regularize_le90(torch.from_numpy(np.asarray(dets.boxes, dtype=np.float64).reshape(-1, 5))).numpy()
    scores = np.asarray(dets.scores, dtype=np.float64)
    labels = np.asarray(dets.labels, dtype=np.int64)
    levels = np.asarray(dets.levels, dtype=np.int64)
    bounds = None if dets.window_bounds is None else np.asarray(dets.window_bounds, dtype=np.float64)
    ev = detection_evidence(boxes, levels, labels, bounds, config)
    group = _bridge_groups(ev, scores, levels, bounds, config)
    fused, touching = _fuse(ev, scores, labels, levels, bounds, group, config)
    single = fused.members == 1
    # Equal scores: the box with more members, then the longer, first (a piece left out of its
    # bridge's group then lies inside the box that outranks it).
    tiebreak = fused.members + fused.boxes[:, 2] / (1.0 + fused.boxes[:, 2].max())
    keep = suppress(fused.boxes, fused.scores, fused.labels, config, tiebreak,
                    None if bounds is None else single & touching)
    keep = keep[np.argsort(-fused.scores[keep], kind="stable")]
    return MergedDetections(fused.boxes[keep], fused.scores[keep], fused.labels[keep], fused.levels[keep],
                            fused.members[keep])


def _bridge_groups(
    ev: Evidence, scores: np.ndarray, levels: np.ndarray, bounds: np.ndarray | None, config: MergeConfig
) -> np.ndarray:
    """Group index ``(N,)`` in ``[0, G)`` of every detection: the parts of one bridge share one.

    Pass 1 joins the detections linked by precise continuations (and stubs); pass 2 compares the
    groups this makes, as fused boxes with the precision of their finest members, over the same
    neighbour pairs: precise continuations join, and a group that continues others only imprecisely
    attaches to the one it agrees with best.
    """
    n = len(ev)
    longer, shorter = neighbour_pairs(ev, config)
    continues = np.zeros(len(longer), dtype=bool)
    precise = np.zeros(len(longer), dtype=bool)
    stub = np.zeros(len(longer), dtype=bool)
    for part in chunk_slices(len(longer), PAIR_CHUNK):  # bounded temporaries however dense the boxes
        rel = relations(ev, longer[part], shorter[part], config)
        continues[part], precise[part], stub[part] = rel.continues, rel.precise, rel.stub
    link = continues & precise
    group = connected_components(n, longer[link], shorter[link])
    group = attach_stub_groups(group, ev.boxes, longer[stub], shorter[stub])
    group = np.unique(group, return_inverse=True)[1]

    # Pass 2: the groups as evidence, over the pairs of groups that hold a neighbour pair.
    a, b = group[longer], group[shorter]
    apart = a != b
    if not apart.any():
        return group
    n_groups = int(group.max()) + 1
    gev = _group_evidence(ev, scores, levels, bounds, group, n_groups, config)
    ga, gb = ordered_pairs(a[apart], b[apart], gev.boxes[:, 2], gev.labels, config)
    joined = np.zeros(len(ga), dtype=bool)
    attach = np.zeros(len(ga), dtype=bool)
    residual, overlap = np.zeros(len(ga)), np.zeros(len(ga))
    for part in chunk_slices(len(ga), PAIR_CHUNK):
        rel = relations(gev, ga[part], gb[part], config)
        joined[part] = rel.continues & rel.precise
        attach[part] = rel.continues & ~rel.precise
        residual[part], overlap[part] = rel.residual, rel.overlap
    # An imprecise link attaches its less precise side (the shorter on a tie) to the single partner
    # it agrees with best, so one coarse box never chains two decks: among the partners that cover
    # most of it (0.9 of its length, else half), the one with the smallest lateral residual (a
    # coarse box's position is too rough to choose between a deck and a sliver of it, not between
    # two decks side by side).
    ca, cb = ga[attach], gb[attach]
    a_child = gev.sigma[ca] > gev.sigma[cb]
    child, parent = np.where(a_child, ca, cb), np.where(a_child, cb, ca)
    cover = overlap[attach] / np.maximum(gev.boxes[child, 2], 1e-9)
    coverage = np.where(cover >= 0.9, 0, np.where(cover >= 0.5, 1, 2))
    order = np.lexsort((-gev.boxes[parent, 2], residual[attach], coverage, child))
    child, parent = child[order], parent[order]
    first = np.r_[True, child[1:] != child[:-1]] if len(child) else np.zeros(0, dtype=bool)
    i = np.concatenate([ga[joined], child[first]])
    j = np.concatenate([gb[joined], parent[first]])
    final = connected_components(n_groups, i, j)
    return np.unique(final[group], return_inverse=True)[1]


def _group_evidence(
    ev: Evidence, scores: np.ndarray, levels: np.ndarray, bounds: np.ndarray | None, group: np.ndarray,
    n_groups: int, config: MergeConfig,
) -> Evidence:
    """Evidence of groups: single detections as they are, larger groups as their fused box."""
    size = np.bincount(group, minlength=n_groups)
    boxes = np.zeros((n_groups, 5))
    sigma, end_sigma = np.zeros(n_groups), np.zeros((n_groups, 2))
    cut = np.zeros((n_groups, 2), dtype=bool)
    labels = np.zeros(n_groups, dtype=np.int64)
    alone = np.flatnonzero(size[group] == 1)
    ga = group[alone]
    boxes[ga], sigma[ga], end_sigma[ga], cut[ga], labels[ga] = (
        ev.boxes[alone], ev.sigma[alone], ev.end_sigma[alone], ev.cut[alone], ev.labels[alone])
    idx = np.flatnonzero(size[group] > 1)
    if len(idx):
        fg = _fuse_members(ev, scores, levels, bounds, group, idx, config)
        gi = np.unique(group[idx])
        # Without window bounds a fused end is no more known to be real than its members' ends.
        boxes[gi], sigma[gi], end_sigma[gi] = fg.boxes, fg.sigma, fg.end_sigma
        cut[gi] = True if bounds is None else fg.cut
        labels[gi] = _best_labels(scores[idx], ev.labels[idx], np.unique(group[idx], return_inverse=True)[1], len(gi))
    touching = cut.any(axis=1)
    return Evidence(boxes, sigma, end_sigma, cut, touching, labels)


def _fuse_members(
    ev: Evidence, scores: np.ndarray, levels: np.ndarray, bounds: np.ndarray | None, group: np.ndarray,
    idx: np.ndarray, config: MergeConfig,
) -> FusedGroups:
    """Fuse the members ``idx`` by their ``group`` (renumbered in order of the group labels)."""
    sub_group = np.unique(group[idx], return_inverse=True)[1]
    n_groups = int(sub_group.max()) + 1
    scales = np.exp2(levels[idx].astype(np.float64))
    return fuse_groups(
        ev.boxes[idx], scores[idx], levels[idx], ev.sigma[idx], ev.end_sigma[idx, 0], sub_group, n_groups,
        None if bounds is None else bounds[idx], config.cut_margin * scales, config.end_k, config.stub_ratio,
        config.score_ratio,
    )


def _best_labels(scores: np.ndarray, labels: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """The label of each group's best member (groups are single-label unless class-agnostic)."""
    order = np.lexsort((-scores, group))
    return labels[order[np.searchsorted(group[order], np.arange(n_groups))]]


def _fuse(
    ev: Evidence,
    scores: np.ndarray,
    labels: np.ndarray,
    levels: np.ndarray,
    bounds: np.ndarray | None,
    group: np.ndarray,
    config: MergeConfig,
) -> tuple[MergedDetections, np.ndarray]:
    """One box per group (unsorted): single detections as they are, larger groups fused; and
    whether each is a single detection that touches its window's border."""
    size = np.bincount(group)
    alone = size[group] == 1
    ones = np.ones(int(alone.sum()), dtype=np.int64)
    out = [(ev.boxes[alone], scores[alone], labels[alone], levels[alone], ones)]
    touching = [ev.touching[alone]]
    idx = np.flatnonzero(~alone)
    if len(idx):
        fg = _fuse_members(ev, scores, levels, bounds, group, idx, config)
        sub_group = np.unique(group[idx], return_inverse=True)[1]
        n_groups = len(fg.scores)
        out.append((fg.boxes, fg.scores, _best_labels(scores[idx], labels[idx], sub_group, n_groups), fg.levels,
                    np.bincount(sub_group, minlength=n_groups)))
        touching.append(np.zeros(n_groups, dtype=bool))
    return MergedDetections(*(np.concatenate(parts) for parts in zip(*out))), np.concatenate(touching)
