"""Fixtures for the CLI tests: a tiny real checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A real hbdnet checkpoint of a tiny, untrained HBD-Net (it detects noise, fast on CPU)."""
    from hbdnet.checkpoint import save_checkpoint
    from hbdnet.models.build import ModelConfig
    from hbdnet.models.hbdnet import HBDNet, HBDNetConfig

    small = ModelConfig(backbone="resnet_tiny", pretrained=False, fpn_channels=16, rpn_feat_channels=16,
                        fc_channels=32, rpn_nms_pre=100, rpn_max_per_img=50, max_per_img=20)
    torch.manual_seed(0)
    model = HBDNet(HBDNetConfig(local=small, global_detector=small))
    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pth", model, meta={"name": "tiny"})
