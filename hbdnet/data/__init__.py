"""Training data: exact pyramid window reads, DOTA-format labels, on-the-fly windows and flips."""

from hbdnet.data.augment import RandomFlip, flip_boxes, flip_image, flip_rel_boxes, flip_sample
from hbdnet.data.dota import DotaFormatError, DotaImage, load_dota_folder, read_dota_labels
from hbdnet.data.raster import read_pyramid_window
from hbdnet.data.windows import (
    GlobalCrops,
    WindowBatch,
    WindowConfig,
    WindowDataset,
    WindowSample,
    collate_windows,
    window_targets,
)

__all__ = [
    "DotaFormatError",
    "DotaImage",
    "GlobalCrops",
    "RandomFlip",
    "WindowBatch",
    "WindowConfig",
    "WindowDataset",
    "WindowSample",
    "collate_windows",
    "flip_boxes",
    "flip_image",
    "flip_rel_boxes",
    "flip_sample",
    "load_dota_folder",
    "read_dota_labels",
    "read_pyramid_window",
    "window_targets",
]
