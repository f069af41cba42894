"""Evaluation on whole images: each image goes through the same pyramid, workers and merge as a scene."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch

from hbdnet.data.dota import DotaImage
from hbdnet.evaluation.rotated_map import evaluate


def detect_images(
    images: list[DotaImage],
    model_path: str | Path,
    device: str = "cpu",
    merge_method: Literal["holistic", "authors"] = "holistic",
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
    precision: str = "auto",
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Merged whole-image detections ``(boxes (N, 5), scores (N,))`` for each image (``precision``:
    ``hbdnet.precision``)."""
    from serving.engine.detectors import DetectorSpec
    from serving.engine.pipeline import detect_scene
    from serving.merge.methods import MergeConfig
    from serving.engine.workers import PoolConfig, make_pool

    spec = DetectorSpec(kind="model", path=str(model_path), device=device, precision=precision)
    merge_config = MergeConfig(method=merge_method)
    out = []
    with make_pool(spec, PoolConfig(workers=workers)) as pool:
        for i, img in enumerate(images):
            result = detect_scene(str(img.image_path), spec, merge_config=merge_config, pool=pool)
            out.append((torch.from_numpy(result.boxes).double(), torch.from_numpy(result.scores).double()))
            if progress is not None:
                progress(i + 1, len(images))
    return out


def evaluate_model(
    images: list[DotaImage],
    model_path: str | Path,
    box_type: Literal["obb", "hbb"] = "obb",
    device: str = "cpu",
    merge_method: Literal["holistic", "authors"] = "holistic",
    use_07_metric: bool = True,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float | int]:
    dets = detect_images(images, model_path, device, merge_method, workers, progress)
    gts = [(img.boxes.double(), img.difficult) for img in images]
    return evaluate(dets, gts, box_type=box_type, use_07_metric=use_07_metric)
