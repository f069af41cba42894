"""The light model learns real bridges: overfitting a handful of NWPU VHR-10 images reaches AP50 >= 0.9.

Slow (a few minutes on two CPU cores): run with ``-m slow``. Skipped where ../shared/data is absent.
"""

import os
from pathlib import Path

import pytest

from hbdnet.data.dota import load_dota_folder
from hbdnet.models.build import ModelConfig
from hbdnet.models.hbdnet import HBDNetConfig
from hbdnet.training.config import DataConfig, ExperimentConfig, OptimConfig, StageConfig, TrainConfig
from hbdnet.training.trainer import train
from serving.engine.detectors import ModelSpec
from serving.evaluate import evaluate_model
from serving.model_ref import model_ref

SHARED = Path(os.environ.get("HBDNET_SHARED_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"))
NWPU_TRAIN = SHARED / "nwpu-bridges" / "train"
IMAGES = ("166", "168", "172", "173")  # all smaller than one window: the local detector sees them whole


def light(**kw) -> ModelConfig:
    return ModelConfig(backbone="efficientnet_lite0", pretrained=True, fpn_channels=64, rpn_feat_channels=64,
                       fc_channels=256, rpn_nms_pre=500, rpn_max_per_img=300, rcnn_num_samples=128, **kw)


@pytest.mark.slow
@pytest.mark.skipif(not NWPU_TRAIN.is_dir(), reason="../shared/data/nwpu-bridges is not here")
def test_overfit_handful_of_real_bridges(tmp_path):
    subset = tmp_path / "subset"
    for sub in ("images", "labelTxt"):
        (subset / sub).mkdir(parents=True)
    for name in IMAGES:
        (subset / "images" / f"{name}.jpg").symlink_to((NWPU_TRAIN / "images" / f"{name}.jpg").resolve())
        (subset / "labelTxt" / f"{name}.txt").symlink_to((NWPU_TRAIN / "labelTxt" / f"{name}.txt").resolve())
    cfg = ExperimentConfig(
        name="overfit",
        model=HBDNetConfig(local=light(), global_detector=light(finest_scale=56.0, use_ssrw=True)),
        data=DataConfig(num_workers=0),
        optim=OptimConfig(warmup_iters=20),
        train=TrainConfig(batch_size=2, checkpoint_interval=100, log_interval=10),
        stages=[StageConfig("local", [0], epochs=150, lr=0.005, lr_steps=[120])],
    )
    model = train(cfg, subset, tmp_path / "run", progress=False)
    metrics = evaluate_model(load_dota_folder(subset), model_ref(ModelSpec(str(model))))
    print(metrics)
    assert metrics["AP50"] >= 0.9, metrics
