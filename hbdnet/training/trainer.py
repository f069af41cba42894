"""Stage-by-stage training of HBD-Net (method doc section 6).

Each stage trains the detector of its pyramid levels on windows cut on the fly from whole images:
first the local detector on level 0, then the global detector(s) on coarser levels, each stage
starting from the weights the previous one left. Work goes to ``work_dir``:

    work_dir/config.yaml            the experiment configuration as run
    work_dir/log.jsonl              one line per logged iteration (losses, lr)
    work_dir/<stage>/latest.pth     resumable state (model + optimizer + epoch)
    work_dir/<stage>/epoch_<n>.pth  periodic checkpoints
    work_dir/<stage>/final.pth      the stage's result (a finished stage is skipped on resume)
    work_dir/model.pth              the trained model, for ``hbdnet detect`` / ``eval``
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from hbdnet.checkpoint import read_checkpoint, save_checkpoint
from hbdnet.config_io import to_dict
from hbdnet.data.augment import RandomFlip
from hbdnet.data.dota import DotaImage, load_dota_folder
from hbdnet.data.windows import WindowBatch, WindowConfig, WindowDataset, collate_windows
from hbdnet.models.hbdnet import HBDNet, WindowContext
from hbdnet.training.config import ExperimentConfig, StageConfig


def lr_at(stage: StageConfig, warmup_iters: int, warmup_ratio: float, epoch: int, iteration: int) -> float:
    """Linear warm-up over the first iterations, then x0.1 at each step epoch (mmcv's schedule)."""
    lr = stage.lr * 0.1 ** sum(epoch >= s for s in stage.lr_steps)
    if iteration < warmup_iters:
        lr *= warmup_ratio + (1 - warmup_ratio) * iteration / warmup_iters
    return lr


def stage_modules(model: HBDNet, stage: StageConfig) -> list[nn.Module]:
    """The modules a stage trains: the detectors of its levels (and IFF's convs with level 0)."""
    mods: list[nn.Module] = []
    for level in stage.levels:
        det = model.detector_for_level(level)
        if all(det is not m for m in mods):
            mods.append(det)
    if model.fusion is not None and 0 in stage.levels:
        mods.append(model.fusion)
        for r in range(1, model.cfg.iff_context_levels + 1):
            det = model.detector_for_level(r)
            if all(det is not m for m in mods):
                mods.append(det)
    return mods


def init_stage(model: HBDNet, stage: StageConfig, previous: StageConfig | None) -> None:
    """Start the stage's coarse detectors from the detector the previous stage trained."""
    if stage.init_from == "none" or previous is None:
        return
    source = model.detector_for_level(max(previous.levels))
    for level in stage.levels:
        target = model.detector_for_level(level)
        if level > 0 and target is not source:
            target.load_state_dict(source.state_dict())


def batch_losses(model: HBDNet, batch: WindowBatch, device: torch.device) -> dict[str, Tensor]:
    """Losses of a batch, computed per pyramid level (one detector per call), averaged by window count."""
    by_level: dict[int, list[int]] = defaultdict(list)
    for i, meta in enumerate(batch.metas):
        by_level[meta["level"]].append(i)
    total: dict[str, Tensor] = {}
    n = len(batch.images)
    for level, idx in by_level.items():
        images = [batch.images[i].to(device) for i in idx]
        targets = [{k: v.to(device) for k, v in batch.targets[i].items()} for i in idx]
        context = None
        if model.fusion is not None and level == 0:
            if batch.global_crops is None:
                raise ValueError("the model fuses features across levels but the data carries no global crops")
            crops = [batch.global_crops[i] for i in idx]
            r_count = model.cfg.iff_context_levels
            context = WindowContext(
                images=[[c.images[r].to(device) for c in crops] for r in range(r_count)],
                rel_boxes=torch.stack([c.rel_boxes[:r_count] for c in crops]).to(device),
                targets=[[{k: v.to(device) for k, v in c.targets[r].items()} for c in crops] for r in range(r_count)],
            )
        losses = model(images, level, targets=targets, context=context)
        for name, value in losses.items():
            if name.startswith("loss"):
                total[name] = total.get(name, 0) + value * (len(idx) / n)
    return total


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_dataset(cfg: ExperimentConfig, images: list[DotaImage], stage: StageConfig) -> WindowDataset:
    mcfg = cfg.model
    wcfg = WindowConfig(
        window=mcfg.window,
        overlap=mcfg.overlap,
        max_side=mcfg.window,
        iof_thr=cfg.data.iof_thr,
        min_length_local=stage.min_length,
        min_length_global=stage.min_length,
        empty_fraction=cfg.data.empty_fraction,
        with_global_crops=mcfg.iff_context_levels if (mcfg.use_iff and 0 in stage.levels) else 0,
        seed=cfg.train.seed,
    )
    flip = RandomFlip(generator=torch.Generator().manual_seed(cfg.train.seed)) if cfg.data.flip else None
    return WindowDataset(images, stage.levels, wcfg, transform=flip)


class Trainer:
    def __init__(
        self,
        cfg: ExperimentConfig,
        data_dir: str | Path,
        work_dir: str | Path,
        device: str | torch.device = "cpu",
        max_iters: int | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
    ):
        self.cfg = cfg
        self.data_dir = Path(data_dir)
        self.work_dir = Path(work_dir)
        self.device = torch.device(device)
        self.max_iters = max_iters  # per stage; for smoke runs
        self.progress = progress
        self.log = log
        self.model = HBDNet(cfg.model).to(self.device)

    def run(self, only: list[str] | None = None) -> Path:
        cfg = self.cfg
        _seed_everything(cfg.train.seed)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        (self.work_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        images = load_dota_folder(self.data_dir, tuple(cfg.data.classes))
        if not images:
            raise ValueError(f"no labelled images found under {self.data_dir} (expected images/ and labelTxt/)")
        names = [s.name for s in cfg.stages]
        unknown = sorted(set(only or []) - set(names))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; this config has {names}")
        previous: StageConfig | None = None
        for stage in cfg.stages:
            final = self.work_dir / stage.name / "final.pth"
            if final.exists():
                self._load_weights(final)
                self.log(f"stage {stage.name}: done earlier, loaded {final}")
            elif only is None or stage.name in only:
                self.train_stage(stage, previous, images)
            previous = stage
        out = save_checkpoint(self.work_dir / "model.pth", self.model, meta={"name": cfg.name, "stages": names})
        self.log(f"wrote {out}")
        return out

    def _load_weights(self, path: Path) -> dict:
        ckpt = read_checkpoint(path)
        self.model.load_state_dict(ckpt["state_dict"])
        return ckpt

    def train_stage(self, stage: StageConfig, previous: StageConfig | None, images: list[DotaImage]) -> None:
        cfg, model, device = self.cfg, self.model, self.device
        stage_dir = self.work_dir / stage.name
        latest = stage_dir / "latest.pth"
        dataset = make_dataset(cfg, images, stage)
        if len(dataset) == 0:
            self.log(f"stage {stage.name}: no training windows at levels {stage.levels}; skipped")
            save_checkpoint(stage_dir / "final.pth", model, meta={"stage": stage.name, "skipped": True})
            return
        modules = stage_modules(model, stage)
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=stage.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
        use_amp = cfg.train.amp and device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

        start_epoch, iteration = 0, 0
        if latest.exists():
            ckpt = self._load_weights(latest)
            state = ckpt["training"]
            optimizer.load_state_dict(state["optimizer"])
            start_epoch, iteration = state["epoch"], state["iteration"]
            self.log(f"stage {stage.name}: resumed at epoch {start_epoch}, iteration {iteration}")
        else:
            init_stage(model, stage, previous)

        loader = DataLoader(
            dataset,
            batch_size=cfg.train.batch_size,
            shuffle=True,
            collate_fn=collate_windows,
            num_workers=cfg.data.num_workers,
            generator=torch.Generator().manual_seed(cfg.train.seed + start_epoch),
            persistent_workers=False,
        )
        log_path = self.work_dir / "log.jsonl"
        self.log(f"stage {stage.name}: levels {stage.levels}, {len(dataset)} windows, {stage.epochs} epochs")
        for epoch in range(start_epoch, stage.epochs):
            model.train()
            for m in modules:
                m.train()
            bar = tqdm(loader, desc=f"{stage.name} epoch {epoch + 1}/{stage.epochs}", disable=not self.progress,
                       leave=False, dynamic_ncols=True)
            for batch in bar:
                lr = lr_at(stage, cfg.optim.warmup_iters, cfg.optim.warmup_ratio, epoch, iteration)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with torch.autocast(device.type, enabled=use_amp):
                    losses = batch_losses(model, batch, device)
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"stage {stage.name}: loss is {loss.item()} at iteration {iteration}")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                iteration += 1
                values = {k: round(float(v.detach()), 5) for k, v in losses.items()}
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{lr:.2e}")
                if iteration % cfg.train.log_interval == 0 or iteration == 1:
                    with log_path.open("a") as f:
                        f.write(json.dumps({"stage": stage.name, "epoch": epoch + 1, "iter": iteration, "lr": lr,
                                            "loss": round(float(loss), 5), **values, "time": time.time()}) + "\n")
                if self.max_iters is not None and iteration >= self.max_iters:
                    break
            done = epoch + 1
            state = {"optimizer": optimizer.state_dict(), "epoch": done, "iteration": iteration}
            meta = {"stage": stage.name, "epoch": done}
            save_checkpoint(latest, model, meta=meta, training=state)
            if done % cfg.train.checkpoint_interval == 0 or done == stage.epochs:
                save_checkpoint(stage_dir / f"epoch_{done}.pth", model, meta=meta)
            if self.max_iters is not None and iteration >= self.max_iters:
                break
        save_checkpoint(stage_dir / "final.pth", model, meta={"stage": stage.name})


def train(
    cfg: ExperimentConfig,
    data_dir: str | Path,
    work_dir: str | Path,
    device: str = "cpu",
    stages: list[str] | None = None,
    max_iters: int | None = None,
    epochs: int | None = None,
    progress: bool = True,
) -> Path:
    if epochs is not None:  # a shorter (or longer) run keeps the schedule's shape
        cfg = replace(cfg, stages=[
            replace(s, epochs=epochs, lr_steps=[max(1, round(e * epochs / s.epochs)) for e in s.lr_steps])
            for s in cfg.stages
        ])
    return Trainer(cfg, data_dir, work_dir, device, max_iters=max_iters, progress=progress).run(stages)
