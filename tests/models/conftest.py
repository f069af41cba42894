"""Shared fixtures for the model tests: a tiny Oriented R-CNN configuration and a synthetic scene."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from hbdnet.models.build import ModelConfig
from hbdnet.pyramid import PlanWindow

AUTZEN = Path(__file__).resolve().parents[2] / "samples" / "autzen_willamette_footbridge_0.30m.tif"


def tiny_config(**overrides) -> ModelConfig:
    """Tiny ResNet, 16-channel FPN, small FC layers; everything else at the authors' values."""
    base = dict(
        backbone="resnet_tiny",
        fpn_channels=16,
        rpn_feat_channels=16,
        fc_channels=64,
        # Fewer proposals than the authors' 2000 per level keep the proposal NMS quick on the CPU.
        rpn_nms_pre=120,
        rpn_max_per_img=150,
        rcnn_num_samples=128,
    )
    base.update(overrides)
    return ModelConfig(**base)


@pytest.fixture
def make_tiny_config():
    """Factory ``make_tiny_config(**overrides) -> ModelConfig``."""
    return tiny_config


def _synthetic_batch(size: int = 192) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Two RGB 0-255 images with bright oriented bars on a dark background and their le90 boxes."""
    g = torch.Generator().manual_seed(0)
    images = torch.full((2, 3, size, size), 30.0) + 10 * torch.rand(2, 3, size, size, generator=g)
    k = size / 192
    boxes = [
        torch.tensor([[60.0 * k, 70.0 * k, 90.0 * k, 18.0 * k, 0.4], [140.0 * k, 130.0 * k, 60.0 * k, 14.0 * k, -1.0]]),
        torch.tensor([[96.0 * k, 96.0 * k, 120.0 * k, 20.0 * k, 0.0]]),
    ]
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    for i, bs in enumerate(boxes):
        for cx, cy, w, h, t in bs.tolist():
            u = (xs - cx) * math.cos(t) + (ys - cy) * math.sin(t)
            v = -(xs - cx) * math.sin(t) + (ys - cy) * math.cos(t)
            inside = (u.abs() <= w / 2) & (v.abs() <= h / 2)
            images[i, :, inside] = 220.0
    targets = [{"boxes": b, "labels": torch.zeros(b.shape[0], dtype=torch.long)} for b in boxes]
    return images, targets


@pytest.fixture
def scene() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """``(images (2, 3, 192, 192), targets)`` of ``_synthetic_batch``."""
    return _synthetic_batch()


@pytest.fixture
def small_scene() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """The same scene at 128 x 128, for loops of training steps."""
    return _synthetic_batch(128)


@pytest.fixture(scope="session")
def autzen_windows() -> list[tuple[np.ndarray, PlanWindow]]:
    """Real windows of the Autzen sample: the footbridge at full size, an edge window (not square, not a
    multiple of 32) and a coarse-level one."""
    with rasterio.open(AUTZEN) as ds:
        bridge = ds.read(window=Window(433, 2938, 1024, 1024))
        edge = ds.read(window=Window(2400, 3100, 848, 900))
        coarse = ds.read(out_shape=(3, 1000, 812))  # the whole scene at 1/4: its level-2 window
    return [(bridge, PlanWindow(0, 1, 433, 2938, 1024, 1024)), (edge, PlanWindow(0, 1, 2400, 3100, 848, 900)),
            (coarse, PlanWindow(2, 4, 0, 0, 812, 1000))]
