"""Oriented-box geometry and ops in plain PyTorch (no compiled extensions)."""

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
    "box_area",
    "hbb_to_obb",
    "le90_to_oc",
    "obb_to_hbb",
    "obb_to_poly",
    "oc_to_le90",
    "poly_to_obb",
    "regularize_le90",
]
