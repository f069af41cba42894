"""A tiny DOTA-format dataset drawn on the fly: bright rotated rectangles ("bridges") on textured ground."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.features import rasterize

from hbdnet.boxes import obb_to_poly
from hbdnet.models.build import ModelConfig

import torch


def write_dota_image(root: Path, name: str, size: tuple[int, int], boxes: list[tuple[float, ...]], seed: int) -> None:
    h, w = size
    rng = np.random.default_rng(seed)
    img = (rng.normal(90, 12, size=(3, h, w))).clip(0, 255).astype(np.uint8)
    polys = obb_to_poly(torch.tensor(boxes, dtype=torch.float64)).numpy().reshape(-1, 4, 2)
    mask = rasterize([shapely.Polygon(p) for p in polys], out_shape=(h, w), fill=0, default_value=1).astype(bool)
    img[0][mask], img[1][mask], img[2][mask] = 220, 210, 190
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labelTxt").mkdir(parents=True, exist_ok=True)
    with rasterio.open(root / "images" / f"{name}.png", "w", driver="PNG", width=w, height=h, count=3, dtype="uint8") as ds:
        ds.write(img)
    lines = ["imagesource:synthetic", "gsd:null"]
    lines += [" ".join(f"{v:.1f}" for v in p.reshape(-1)) + " bridge 0" for p in polys]
    (root / "labelTxt" / f"{name}.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="session")
def tiny_dota(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_dota")
    write_dota_image(root, "a", (300, 260), [(80, 90, 120, 16, 0.3), (180, 220, 60, 12, -1.2)], seed=0)
    write_dota_image(root, "b", (256, 300), [(150, 128, 200, 18, 0.0), (60, 60, 40, 10, 0.8)], seed=1)
    return root


def _tiny_model_config(**overrides) -> ModelConfig:
    base = dict(backbone="resnet_tiny", fpn_channels=16, rpn_feat_channels=16, fc_channels=32,
                rpn_nms_pre=200, rpn_max_per_img=100, rcnn_num_samples=64)
    base.update(overrides)
    return ModelConfig(**base)


@pytest.fixture(scope="session")
def tiny_experiment():
    """An experiment small enough to train in seconds on a CPU (128 px windows, tiny ResNet)."""
    from hbdnet.models.hbdnet import HBDNetConfig
    from hbdnet.training.config import DataConfig, ExperimentConfig, StageConfig, TrainConfig

    def make(use_iff: bool = False, global_mode: str = "shared") -> ExperimentConfig:
        model = HBDNetConfig(
            local=_tiny_model_config(),
            global_detector=_tiny_model_config(finest_scale=56.0, use_ssrw=True),
            global_mode=global_mode,
            num_global_levels=2,
            use_iff=use_iff,
            window=128,
            overlap=32,
        )
        return ExperimentConfig(
            name="tiny",
            model=model,
            data=DataConfig(num_workers=0),
            train=TrainConfig(batch_size=2, checkpoint_interval=1, log_interval=1),
            stages=[StageConfig("local", [0], epochs=2, lr=0.01, lr_steps=[1]),
                    StageConfig("coarse", [1], epochs=1, lr=0.005, lr_steps=[], min_length=4)],
        )

    return make
