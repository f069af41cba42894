"""Oriented-box geometry and ops in plain PyTorch (no compiled extensions)."""

from hbdnet.boxes.iou import box_iou_rotated, intersection_area_rotated
from hbdnet.boxes.nms import batched_nms_horizontal, batched_nms_rotated, nms_horizontal, nms_rotated
from hbdnet.boxes.roi_align import RoIAlignRotated, roi_align_rotated
from hbdnet.boxes.convention import (
    box_area,
    hbb_to_obb,
    le90_to_oc,
    obb_to_hbb,
    obb_to_poly,
    oc_to_le90,
    poly_to_obb,
    regularize_le90,
)

__all__ = [
    "RoIAlignRotated",
    "batched_nms_horizontal",
    "batched_nms_rotated",
    "box_iou_rotated",
    "intersection_area_rotated",
    "nms_horizontal",
    "nms_rotated",
    "roi_align_rotated",
    "box_area",
    "hbb_to_obb",
    "le90_to_oc",
    "obb_to_hbb",
    "obb_to_poly",
    "oc_to_le90",
    "poly_to_obb",
    "regularize_le90",
]
