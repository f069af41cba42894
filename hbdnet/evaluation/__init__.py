"""Evaluation of whole-image detections (the authors' GLH-Bridge protocol)."""

from hbdnet.evaluation.rotated_map import (
    DEFAULT_IOU_THRS,
    DEFAULT_LENGTH_RANGES,
    DEFAULT_RANGE_NAMES,
    average_precision,
    evaluate,
)

__all__ = [
    "DEFAULT_IOU_THRS",
    "DEFAULT_LENGTH_RANGES",
    "DEFAULT_RANGE_NAMES",
    "average_precision",
    "evaluate",
]
