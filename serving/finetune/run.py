"""``hbdnet finetune``: a trained model adapted to a user's scenes from their corrected bridge layer.

The recipe is made for tens of bridges on a CPU, minutes rather than hours. It starts from the base
model's weights and keeps its architecture. By default only the box heads learn (``roi_head``). The
trunk (backbone, FPN, RPN head) stays as it was: with tens of bridges a trunk overfits (the model
card's runs), frozen it needs no backward pass, most of an iteration's cost, and the base file's int8
trunk still holds for it, so the new file keeps the CPU speed and the int8 scores of the one it came
from. On imagery made from NWPU this default did better than training the RPN head too
(``MODEL_CARD.md``, "Fine-tuning"). ``parts`` chooses otherwise; then the int8 trunk is made again from
the new weights, calibrated on windows of the user's own scenes.

The stages are those of the base model's training: the local detector on level 0, then the global
detector on the coarser levels of the same scenes (from its own weights). Windows come from the
pyramid ``hbdnet detect`` runs, with the light model's augmentation. Each epoch also draws fresh
bridge-free windows from the reviewed areas, about as many as there are bridges.

The operating point (the score threshold stored in the file) is chosen again on held-back scenes when
there are enough labels for it: at least ``MIN_SCENES_TO_HOLD_BACK`` scenes and
``MIN_BRIDGES_TO_HOLD_BACK`` bridges. Then the last scenes, with at least a fifth of the bridges, train
nothing and choose the threshold with the best F1. Otherwise the threshold is the base model's. The
result says which.

The run lives in a work folder (``<output>.finetune/`` by default). ``latest.pth`` is saved every few
iterations and on Ctrl-C, and the same command resumes it, batch for batch (``hbdnet.training``). A
folder that holds the run of other inputs is refused rather than mixed in.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from hbdnet.checkpoint import load_model, read_checkpoint, read_int8_trunks, resolve_model_path, save_safetensors
from hbdnet.config_io import from_dict, to_dict
from hbdnet.data.augment import AugmentConfig
from hbdnet.data.dota import DotaImage
from hbdnet.evaluation.rotated_map import evaluate
from hbdnet.models.hbdnet import HBDNetConfig
from hbdnet.training.config import DataConfig, ExperimentConfig, StageConfig, TrainConfig
from hbdnet.training.trainer import train
from serving.engine.aoi import centres_inside
from serving.evaluate import detect_images
from serving.finetune.data import LabelledScenes, labelled_scenes, sha256
from serving.model_ref import ModelGsd, resolve_model

MIN_SCENES_TO_HOLD_BACK = 2
MIN_BRIDGES_TO_HOLD_BACK = 20
TRUNK_PARTS = ("backbone", "neck", "rpn_head")


@dataclass(frozen=True)
class FinetuneOptions:
    epochs: int = 8  # per stage
    lr: float = 0.001  # the local stage's; the global stage runs at half of it
    parts: tuple[str, ...] = ("roi_head",)
    bands: tuple[int, ...] | None = None
    batch_size: int = 2
    seed: int = 0
    checkpoint_every: int = 10
    max_iters: int | None = None  # per stage; a shorter run that the same command resumes
    device: str = "cpu"


@dataclass
class FinetuneResult:
    output: Path | None  # None when the run stopped early (max_iters): nothing written yet
    bridges: int
    held_back: list[Path]
    score_thr: float | None
    operating_point: str  # how the threshold was chosen, in words
    int8: str  # what became of the base model's int8 trunk, in words
    labels_outside: int
    reviewed_given: bool


def finetune(base: str, scenes: list[Path], labels: Path, output: Path, *, reviewed: Path | None = None,
             work_dir: Path | None = None, options: FinetuneOptions = FinetuneOptions(),
             progress: bool = True, log: Callable[[str], None] = print) -> FinetuneResult:
    """Fine-tune ``base`` (a file or a bundled name) on ``scenes`` and their ``labels``; write ``output``."""
    base_path = resolve_model_path(base)
    base_ckpt = read_checkpoint(base_path)
    base_cfg = from_dict(HBDNetConfig, base_ckpt["config"])
    data = labelled_scenes(scenes, labels, reviewed, options.bands, ModelGsd.from_meta(base_ckpt["meta"]))
    train_images, held = _split(data)
    cfg = finetune_config(base_cfg, str(base_path), sum(len(i.boxes) for i in train_images), options)
    work_dir = work_dir or output.with_name(output.name + ".finetune")
    _claim(work_dir, cfg, data, options)
    model_path = train(cfg, train_images, work_dir, device=options.device, max_iters=options.max_iters,
                       progress=progress, log=log)
    if not read_checkpoint(model_path)["meta"].get("complete"):
        return FinetuneResult(None, data.bridges, [], None, "not chosen: the run has not ended", "not made yet",
                              data.labels_outside, data.reviewed_given)
    model, _ = load_model(model_path)
    dtype = base_ckpt.get("dtype", "float32")
    trunks, int8 = _int8_trunks(model, dtype, read_int8_trunks(base_path), options.parts, data)
    base_thr = base_ckpt["meta"].get("score_thr")
    # Trained on the grid the base model's GSD range gives: the new model runs on it too.
    grid = {k: v for k, v in base_ckpt["meta"].items() if k == "gsd_m"}
    if held:
        # Chosen on the model as it will run (its int8 trunk on a CPU): written once without a threshold.
        candidate = save_safetensors(work_dir / "candidate.safetensors", model, dtype=dtype, int8_trunks=trunks,
                                     meta=grid)
        thr = _best_threshold(candidate, held, options.bands, data)
        how = (f"chosen on {len(held)} held-back scene(s) with {sum(len(i.boxes) for i in held)} bridges "
               f"(best F1): {thr:.3f}")
    else:
        thr = base_thr
        how = (f"kept from the base model ({base_thr}): fewer than {MIN_SCENES_TO_HOLD_BACK} scenes or "
               f"{MIN_BRIDGES_TO_HOLD_BACK} bridges to hold some back")
    meta = {
        "name": f"{base_ckpt['meta'].get('name', base_path.stem)}-finetuned",
        "finetuned_from": {"model": str(base), "sha256": sha256(base_path), "meta": base_ckpt["meta"]},
        "finetune": {"files": data.checksums, "bridges_trained": sum(len(i.boxes) for i in train_images),
                     "held_back": [str(i.image_path) for i in held], "reviewed_areas_given": data.reviewed_given,
                     "parts": list(options.parts), "epochs": options.epochs, "lr": options.lr,
                     "operating_point": how},
        **grid,
    }
    save_safetensors(output, model, meta=meta, score_thr=thr, dtype=dtype, int8_trunks=trunks)
    return FinetuneResult(output, data.bridges, [i.image_path for i in held], thr, how, int8,
                          data.labels_outside, data.reviewed_given)


def _int8_trunks(model, dtype: str, base: dict[str, bytes], parts: tuple[str, ...],
                 data: LabelledScenes) -> tuple[dict[str, bytes], str]:
    """The base file's int8 trunks where the trunk did not learn, else the same detectors' trunks made
    again from the new weights, calibrated on the user's scenes."""
    from hbdnet.calibration import stored_int8_trunks

    if not base:
        return {}, "none: the base model has no int8 trunk"
    if not set(parts) & set(TRUNK_PARTS):
        return base, f"kept from the base model ({', '.join(sorted(base))})"
    trunks = stored_int8_trunks(model, dtype, data.images, only=tuple(base))
    return trunks, f"made again ({', '.join(sorted(base))}), calibrated on windows of your scenes"


def finetune_config(base: HBDNetConfig, base_path: str, bridges: int, options: FinetuneOptions) -> ExperimentConfig:
    """The experiment: the base architecture, its weights, two short stages of ``options.parts``."""
    model = replace(base, local=replace(base.local, pretrained=False, backbone_weights=None),
                    global_detector=replace(base.global_detector, pretrained=False, backbone_weights=None))
    e = options.epochs
    steps = [max(1, round(0.75 * e))] if e > 1 else []
    parts = list(options.parts)
    stages = [StageConfig("local", [0], epochs=e, lr=options.lr, lr_steps=steps, parts=parts)]
    # Every coarser level a scene has (a 32k scene has five); a stage without windows is skipped.
    stages.append(StageConfig("global", list(range(1, 8)), epochs=e, lr=options.lr / 2, lr_steps=steps,
                              init_from="none", min_length=15.0, parts=parts))
    augment = AugmentConfig(enabled=True, rot90=True, scale_prob=0.5, scale_range=(0.7, 1.4), crop_prob=0.3,
                            crop_min=0.5, color_prob=0.8, blur_prob=0.2)
    return ExperimentConfig(
        name="finetune",
        model=model,
        data=DataConfig(augment=augment, negatives_per_epoch=min(64, max(4, bridges)), num_workers=1),
        train=TrainConfig(batch_size=options.batch_size, seed=options.seed, checkpoint_every=options.checkpoint_every,
                          checkpoint_interval=max(1, e)),
        stages=stages,
        init_weights=base_path,
    )


def _split(data: LabelledScenes) -> tuple[list[DotaImage], list[DotaImage]]:
    """Training scenes and held-back ones (the last scenes, with at least a fifth of the bridges)."""
    images = data.images
    if len(images) < MIN_SCENES_TO_HOLD_BACK or data.bridges < MIN_BRIDGES_TO_HOLD_BACK:
        return images, []
    held: list[DotaImage] = []
    for img in reversed(images[1:]):
        if sum(len(i.boxes) for i in held) >= data.bridges / 5:
            break
        held.insert(0, img)
    return images[:len(images) - len(held)], held


def _best_threshold(model_path: Path, held: list[DotaImage], bands: tuple[int, ...] | None,
                    data: LabelledScenes) -> float:
    model = resolve_model(str(model_path), device="cpu")
    dets = detect_images(held, model, bands=bands)  # boxes in the scenes' pixels; labels are on the read grid
    dets = [_on_reviewed(img, torch.from_numpy(data.to_grid(img, boxes.numpy())), scores)
            for img, (boxes, scores) in zip(held, dets)]
    gts = [(img.boxes.double(), img.difficult) for img in held]
    return float(evaluate(dets, gts)["f1_score_thr"])


def _on_reviewed(img: DotaImage, boxes: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Only boxes centred in the reviewed area can be judged right or wrong."""
    keep = torch.from_numpy(centres_inside(img.background, boxes[:, :2].numpy().astype(np.float64)))
    return boxes[keep], scores[keep]


def _claim(work_dir: Path, cfg: ExperimentConfig, data: LabelledScenes, options: FinetuneOptions) -> None:
    """The work folder is this run's: a folder holding another run's state is refused, not resumed."""
    inputs = {"config": to_dict(cfg), "files": data.checksums,
              "options": {k: v for k, v in to_dict(options).items() if k not in ("max_iters", "device")}}
    stamp = work_dir / "finetune.json"
    if stamp.exists():
        if json.loads(stamp.read_text()) != json.loads(json.dumps(inputs)):
            raise FinetuneWorkDirError(f"{work_dir} holds a fine-tuning run of other inputs or settings; "
                                       "delete it, or give another --work-dir")
        return
    if work_dir.exists() and any(work_dir.iterdir()):
        raise FinetuneWorkDirError(f"{work_dir} is not empty and holds no fine-tuning run; give another --work-dir")
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(inputs, indent=1))


class FinetuneWorkDirError(ValueError):
    """A work folder that is not this run's."""
