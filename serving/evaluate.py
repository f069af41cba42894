"""Evaluation on whole labelled images: each image goes through the one scene path (``serving.detect``),
with the same pyramid, workers and merge as a scene."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Literal

import torch
from rasterio.errors import NotGeoreferencedWarning

from hbdnet.data.dota import DotaImage
from hbdnet.evaluation.rotated_map import evaluate
from serving.detect import DetectOptions, detect
from serving.engine.pools import PoolConfig, make_pool
from serving.merge.config import MergeConfig
from serving.model_ref import ModelRef


def detect_images(
    images: list[DotaImage],
    model: ModelRef,
    merge_method: Literal["holistic", "authors"] = "holistic",
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
    bands: tuple[int, ...] | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Merged whole-image detections ``(boxes (N, 5), scores (N,))`` of every box the model reports
    (no score threshold: AP ranks them all)."""
    options = DetectOptions(score_thr=0.0, bands=bands, merge_config=MergeConfig(method=merge_method))
    out = []
    with make_pool(model.spec, PoolConfig(workers=workers)) as pool, warnings.catch_warnings():
        # Labelled images are photographs without georeference, as expected here.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        for i, img in enumerate(images):
            result = detect(str(img.image_path), model, options, pool=pool)
            out.append((torch.from_numpy(result.boxes).double(), torch.from_numpy(result.scores).double()))
            if progress is not None:
                progress(i + 1, len(images))
    return out


def evaluate_model(
    images: list[DotaImage],
    model: ModelRef,
    box_type: Literal["obb", "hbb"] = "obb",
    merge_method: Literal["holistic", "authors"] = "holistic",
    use_07_metric: bool = True,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float | int]:
    dets = detect_images(images, model, merge_method, workers, progress)
    gts = [(img.boxes.double(), img.difficult) for img in images]
    return evaluate(dets, gts, box_type=box_type, use_07_metric=use_07_metric, score_thr=model.score_thr)

