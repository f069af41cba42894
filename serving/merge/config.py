"""Parameters of the scene-wide merge (see :mod:`serving.merge.methods` for the rules they tune)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class MergeConfig:
    """How window detections become scene detections.

    Holistic distances are in units of box widths (``h`` of le90 boxes), so one setting serves a
    20 px footbridge and a 60 px motorway deck, at every pyramid level.
    """

    method: Literal["holistic", "authors"] = "holistic"

    # --- the authors' baseline (method digest section 7) ---
    level_nms_iou: float = 0.4  # rotated NMS over all windows of one level, per class
    final_nms_iou: float = 0.5  # then class-agnostic rotated NMS over all levels

    # --- holistic: when two boxes are parts of one bridge ---
    angle_tol_deg: float = 10.0  # largest direction difference
    # Largest offset of the two centre lines, in widths of the wider box. Must stay below 1 (0.5
    # leaves room for jitter): parallel decks side by side are (h1 + h2) / 2 + gap apart.
    lateral_tol: float = 0.5
    gap_tol: float = 0.5  # largest gap along the axis, in widths of the narrower box
    width_tol: float = 0.5  # largest width difference, in widths of the wider box (+ 1/2 level px each)
    # Uncertainty of a box end, as a fraction of the box's length: ends this close to a group's
    # outermost end "reach" it; an overlap this long still counts as two boxes meeting end to end.
    end_tol: float = 0.1
    # A box end within cut_margin level pixels (+ end_tol of its length) of its window's border is a
    # cut by the window, not the end of a bridge.
    cut_margin: float = 2.0
    # Stubs: a box cut by its window border, stub_min to stub_ratio widths of another box long,
    # on that box's deck within stub_ratio widths of its end (a bridge end's piece in the next window).
    stub_min: float = 0.5
    stub_ratio: float = 1.5

    # --- holistic: suppression among fused boxes ---
    duplicate_iou: float = 0.5  # rotated IoU above this: the lower-scored box is a duplicate
    contain_iof: float = 0.6  # this fraction of the lower-scored box inside the other: a piece of it
    class_agnostic: bool = False  # fuse and suppress across labels
