"""Parameters of the scene-wide merge (see :mod:`serving.merge.methods` for the rules they tune)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class MergeConfig:
    """How window detections become scene detections.

    Holistic tolerances are set by the **level** of the boxes compared: a box from pyramid level
    ``k`` was measured on an image ``2**k`` times coarser than the scene, so each of its edges is
    uncertain by ``edge_error`` pixels of that level, ``edge_error * 2**k`` scene pixels (its
    ``sigma``). Every relation between two boxes allows the sum of their two sigmas times a factor:
    a pair of level-0 boxes is compared to within a few scene pixels, a level-4 box to within a
    hundred. Widths enter only where a rule is about the deck itself (width similarity, stubs).
    """

    method: Literal["holistic", "authors"] = "holistic"

    # --- the authors' baseline (method digest section 7) ---
    level_nms_iou: float = 0.4  # rotated NMS over all windows of one level, per class
    final_nms_iou: float = 0.5  # then class-agnostic rotated NMS over all levels

    # --- holistic: how precise a box is ---
    edge_error: float = 2.0  # uncertainty of a box edge, in pixels of its level (sigma = edge_error * 2**k)
    # Extra uncertainty of a box end as a fraction of the box's length (a detector whose end errors
    # grow with the box); the cut margin never uses it.
    end_frac: float = 0.03

    # --- holistic: when two boxes are parts of one bridge ---
    # Largest offset of the two centre lines over their common interval: lateral_k * (sigma_a + sigma_b).
    lateral_k: float = 1.25
    # A box may stick out past a real end of the other, or leave a gap to it when both facing ends
    # are cuts, by end_k * (end sigma_a + end sigma_b); past a real end by more, they are two bridges.
    end_k: float = 1.5
    # Largest direction difference: angle_base_deg plus each box's own angle uncertainty
    # (atan(2 lateral_k sigma / length)), at most angle_tol_deg.
    angle_base_deg: float = 1.0
    angle_tol_deg: float = 15.0
    width_tol: float = 0.5  # width difference, in widths of the wider box (+ 2 (sigma_a + sigma_b))
    # A box end within cut_margin pixels of its level from its window's border (or beyond it) is a
    # cut by the window, any other end is the end of the bridge.
    cut_margin: float = 3.0
    # Parallel decks this far apart (scene px between their edges) are never chained into one group:
    # a link whose lateral tolerance t has 2 t > narrower width + twin_gap is too coarse to tell them
    # apart, and only attaches the less precise side to its single best partner.
    twin_gap: float = 5.0
    # Stubs: a box cut by its window border, stub_min to stub_ratio widths of another box long, on that
    # box's deck (within stub_lateral of its width) near its end (a bridge end's piece in the next window).
    stub_min: float = 0.5
    stub_ratio: float = 1.5
    stub_lateral: float = 0.5

    # A fused box takes its geometry (direction, ends, cross-section) only from members scoring at
    # least score_ratio of its best member: a doubtful detection that joined a group (a false
    # positive beside the bridge, within a coarse box's tolerance) does not move the confident ones.
    score_ratio: float = 0.5

    # --- holistic: suppression among fused boxes ---
    duplicate_iou: float = 0.5  # rotated IoU above this: the lower-ranked box is a duplicate
    contain_iof: float = 0.6  # this fraction of the lower-ranked box inside the other: a piece of it,
    piece_width: float = 0.5  # ... if at least this share of its width (narrower: a deck beside others)
    class_agnostic: bool = False  # fuse and suppress across labels
