"""Stage-by-stage training of HBD-Net (method doc section 6).

Each stage trains the detector of its pyramid levels on windows cut on the fly from whole images:
first the local detector on level 0, then the global detector(s) on coarser levels, each stage
starting from the weights the previous one left. Work goes to ``work_dir``:

    work_dir/config.yaml            the experiment configuration as run
    work_dir/log.jsonl              one line per logged iteration (losses, lr, s/iter)
    work_dir/<stage>/latest.pth     resumable state: model, optimizer, epoch, batch in the epoch,
                                    iteration, RNG states; written every ``checkpoint_every``
                                    iterations, at each epoch end, at ``--max-iters`` and on Ctrl-C
    work_dir/<stage>/epoch_<n>.pth  kept snapshots every ``checkpoint_interval`` epochs
    work_dir/<stage>/final.pth      the stage's result (a finished stage is skipped on resume)
    work_dir/model.pth              the trained model, for ``hbdnet detect`` / ``eval``

A resumed run continues exactly where the saved one was: the same batches (the data order and
every augmentation are seeded by seed, epoch and index, see ``hbdnet.training.data``), the same
optimizer state and learning rate, the same RNG state for the model's samplers.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from hbdnet.checkpoint import CheckpointError, read_checkpoint, resolve_model_path, save_checkpoint
from hbdnet.config_io import to_dict
from hbdnet.data.augment import Augment, RandomFlip
from hbdnet.data.dota import DotaImage, load_dota_folder
from hbdnet.data.synthetic import SyntheticConfig, SyntheticScenes
from hbdnet.data.windows import WindowBatch, WindowConfig, WindowDataset, collate_windows
from hbdnet.models.hbdnet import HBDNet, WindowContext
from hbdnet.training.config import PART_PATHS, ExperimentConfig, OptimConfig, StageConfig
from hbdnet.training.data import EpochSampler, TrainingSet


def warmup_length(optim: OptimConfig, stage_iters: int) -> int:
    """Warm-up iterations of a stage: ``warmup_fraction`` of its iterations, at most ``warmup_iters``."""
    return max(0, min(optim.warmup_iters, round(optim.warmup_fraction * stage_iters)))


def lr_at(stage: StageConfig, warmup_iters: int, warmup_ratio: float, epoch: int, iteration: int) -> float:
    """Linear warm-up over the first iterations, then x0.1 at each step epoch (mmcv's schedule)."""
    lr = stage.lr * 0.1 ** sum(epoch >= s for s in stage.lr_steps)
    if iteration < warmup_iters:
        lr *= warmup_ratio + (1 - warmup_ratio) * iteration / warmup_iters
    return lr


def stage_modules(model: HBDNet, stage: StageConfig) -> list[nn.Module]:
    """The modules a stage trains: the detectors of its levels (and IFF's convs with level 0), or
    only their ``stage.parts``."""
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
    if stage.parts is None:
        return mods
    found = [_part(m, PART_PATHS.get(part, part)) for m in mods for part in stage.parts]
    return [p for p in found if p is not None]


def _part(module: nn.Module, path: str) -> nn.Module | None:
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


@contextlib.contextmanager
def frozen_except(model: nn.Module, params: list[nn.Parameter]) -> Iterator[None]:
    """Every trainable parameter of ``model`` but ``params`` frozen (no gradient computed) while inside."""
    keep = {id(p) for p in params}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in keep]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


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
    """Losses of a batch, computed per detector (one call per level), averaged by window count.

    A window goes to the detector of ``meta["detector_level"]`` (default: its own level).
    """
    by_level: dict[int, list[int]] = defaultdict(list)
    for i, meta in enumerate(batch.metas):
        by_level[meta.get("detector_level", meta["level"])].append(i)
    total: dict[str, Tensor] = {}
    n = len(batch.images)
    for level, idx in sorted(by_level.items()):
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


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_dataset(cfg: ExperimentConfig, images: list[DotaImage], stage: StageConfig) -> TrainingSet:
    """The stage's windows (levels ``data_levels``) and synthetic windows, with the augmentation."""
    mcfg = cfg.model
    data_levels = stage.data_levels if stage.data_levels is not None else stage.levels
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
    windows = WindowDataset(images, data_levels, wcfg) if data_levels else None
    synthetic = None
    if stage.synthetic:
        scfg = SyntheticConfig(size=min(stage.synthetic_size or mcfg.window, mcfg.window), level=stage.levels[0],
                               iof_thr=cfg.data.iof_thr,
                               min_length=max(stage.min_length, 2.0))
        synthetic = SyntheticScenes(images, stage.synthetic, scfg)
    aug = cfg.data.augment
    if aug.enabled:
        transform = Augment(replace(aug, max_side=mcfg.window, iof_thr=cfg.data.iof_thr,
                                    min_length=max(aug.min_length, stage.min_length)), flip=cfg.data.flip)
    else:
        transform = RandomFlip() if cfg.data.flip else None
    trained = set(stage.levels)

    def route(level: int) -> int:
        return level if level in trained else stage.levels[0]

    return TrainingSet(windows, synthetic, transform, seed=cfg.train.seed, route=route,
                       negatives=cfg.data.negatives_per_epoch)


def _ignore_sigint(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which saves and stops (a worker that died
    of it would make the main process fail instead)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class _StopRequest:
    """Ctrl-C (SIGINT) during training: finish the iteration, save, stop. A second Ctrl-C aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C after saving a resumable checkpoint (``path``)."""

    def __init__(self, path: Path, iteration: int):
        super().__init__(f"interrupted at iteration {iteration}; saved {path}")
        self.path = path
        self.iteration = iteration


@dataclass
class StagePlan:
    stage: StageConfig
    dataset: TrainingSet
    iters_per_epoch: int

    @property
    def total_iters(self) -> int:
        return self.iters_per_epoch * self.stage.epochs


class Trainer:
    def __init__(
        self,
        cfg: ExperimentConfig,
        data: str | Path | list[DotaImage],
        work_dir: str | Path,
        device: str | torch.device = "cpu",
        max_iters: int | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
        on_iteration: Callable[[Trainer, int], None] | None = None,
    ):
        """``data``: a DOTA-format folder (images/ and labelTxt/), or the labelled images themselves."""
        self.cfg = cfg
        self.data = data if isinstance(data, list) else Path(data)
        self.work_dir = Path(work_dir)
        self.device = torch.device(device)
        self.max_iters = max_iters  # per stage; for smoke runs
        self.progress = progress
        self.log = log
        self.on_iteration = on_iteration  # called after every iteration (tests, monitoring)
        _seed_everything(cfg.train.seed)  # the heads' initial weights follow the seed
        self.model = HBDNet(cfg.model).to(self.device)
        self._remaining_after: int = 0  # iterations of the stages after the current one (ETA)

    def run(self, only: list[str] | None = None) -> Path:
        """Train every stage not finished yet; returns ``work_dir/model.pth``.

        A stage is finished when ``<stage>/final.pth`` exists; otherwise it resumes from
        ``<stage>/latest.pth`` if that exists. Once a stage has trained in this run, the resumable
        state of the later stages is stale (they start from this stage's weights) and is ignored.
        Ctrl-C saves ``latest.pth`` after the current iteration and raises :class:`TrainingInterrupted`.
        """
        cfg = self.cfg
        _seed_everything(cfg.train.seed)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        (self.work_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        if isinstance(self.data, list):
            images = self.data
        else:
            images = load_dota_folder(self.data, tuple(cfg.data.classes))
            if not images:
                raise ValueError(f"no labelled images found under {self.data} (expected images/ and labelTxt/)")
        names = [s.name for s in cfg.stages]
        unknown = sorted(set(only or []) - set(names))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; this config has {names}")
        todo = [s for s in cfg.stages if not (self.work_dir / s.name / "final.pth").exists()
                and (only is None or s.name in only)]
        if cfg.init_weights is not None:  # a finished or resumed stage then loads its own weights over them
            self.load_init_weights(cfg.init_weights)
        plans = {s.name: self.plan_stage(s, images) for s in todo}
        previous: StageConfig | None = None
        trained_before = False
        complete = True
        with _StopRequest() as stop:
            for stage in cfg.stages:
                final = self.work_dir / stage.name / "final.pth"
                if final.exists():
                    self._load_weights(final)
                    self.log(f"stage {stage.name}: done earlier, loaded {final}")
                elif stage.name in plans:
                    later = [plans[s.name] for s in todo[todo.index(stage) + 1:]]
                    self._remaining_after = sum(self._iters_left(p, self.max_iters) for p in later)
                    done = self.train_stage(plans[stage.name], previous, stop, fresh=trained_before)
                    trained_before = True
                    complete &= done
                else:
                    complete = False
                previous = stage
        meta = {"name": cfg.name, "stages": names, "complete": complete}
        out = save_checkpoint(self.work_dir / "model.pth", self.model, meta=meta)
        self.log(f"wrote {out}" + ("" if complete else " (not every stage has run to its end)"))
        return out

    def load_init_weights(self, spec: str) -> None:
        """Start from the weights of the trained model ``spec``; ``ValueError`` where its architecture differs."""
        try:
            ckpt = read_checkpoint(resolve_model_path(spec))
        except CheckpointError as err:
            raise ValueError(f"init_weights: {err}") from err
        ours = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
        if ours != theirs:
            differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
            raise ValueError(f"init_weights: {spec} is not this config's architecture "
                             f"({len(differ)} weights differ, e.g. {differ[0]}: {theirs.get(differ[0])} "
                             f"in the file, {ours.get(differ[0])} here)")
        self.model.load_state_dict(ckpt["state_dict"])
        self.log(f"starting from the weights of {spec}")

    def plan_stage(self, stage: StageConfig, images: list[DotaImage]) -> StagePlan:
        dataset = make_dataset(self.cfg, images, stage)
        return StagePlan(stage, dataset, math.ceil(len(dataset) / self.cfg.train.batch_size))

    def _iters_left(self, plan: StagePlan, max_iters: int | None) -> int:
        total = plan.total_iters if max_iters is None else min(plan.total_iters, max_iters)
        latest = self.work_dir / plan.stage.name / "latest.pth"
        if latest.exists():
            try:
                total -= read_checkpoint(latest)["training"]["iteration"]
            except (CheckpointError, KeyError):
                pass
        return max(0, total)

    def _load_weights(self, path: Path) -> dict:
        ckpt = read_checkpoint(path)
        self.model.load_state_dict(ckpt["state_dict"])
        return ckpt

    def train_stage(
        self,
        plan: StagePlan,
        previous: StageConfig | None,
        stop: _StopRequest | None = None,
        fresh: bool = False,
    ) -> bool:
        """Train one stage (resuming from its ``latest.pth`` unless ``fresh``); True when it ran to its end."""
        cfg, model, device = self.cfg, self.model, self.device
        stage, dataset = plan.stage, plan.dataset
        stage_dir = self.work_dir / stage.name
        latest = stage_dir / "latest.pth"
        if len(dataset) == 0:
            self.log(f"stage {stage.name}: no training windows at levels {stage.levels}; skipped")
            save_checkpoint(stage_dir / "final.pth", model, meta={"stage": stage.name, "skipped": True})
            return True
        modules = stage_modules(model, stage)
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=stage.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
        use_amp = cfg.train.amp and device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        per_epoch, total = plan.iters_per_epoch, plan.total_iters
        warmup = warmup_length(cfg.optim, total)
        bs = cfg.train.batch_size

        epoch, in_epoch, iteration = 0, 0, 0
        if latest.exists() and fresh:
            self.log(f"stage {stage.name}: an earlier stage trained in this run; ignoring the stale {latest}")
        if latest.exists() and not fresh:
            ckpt = self._load_weights(latest)
            state = ckpt["training"]
            optimizer.load_state_dict(state["optimizer"])
            if use_amp and "scaler" in state:
                scaler.load_state_dict(state["scaler"])
            epoch, in_epoch, iteration = state["epoch"], state.get("batch", 0), state["iteration"]
            if "rng" in state:
                _set_rng_state(state["rng"])
            self.log(f"stage {stage.name}: resumed from {latest} at iteration {iteration}/{total} "
                     f"(epoch {epoch + 1}, batch {in_epoch})")
        else:
            init_stage(model, stage, previous)
            torch.manual_seed(cfg.train.seed + 7919 * (cfg.stages.index(stage) + 1))

        def save_latest() -> Path:
            e, b = (epoch + 1, 0) if in_epoch >= per_epoch else (epoch, in_epoch)
            state = {"optimizer": optimizer.state_dict(), "epoch": e, "batch": b, "iteration": iteration,
                     "lr": lr_at(stage, warmup, cfg.optim.warmup_ratio, e, iteration), "rng": _rng_state(),
                     "total_iters": total}
            if use_amp:
                state["scaler"] = scaler.state_dict()
            return save_checkpoint(latest, model, meta={"stage": stage.name, "epoch": e, "iteration": iteration},
                                   training=state)

        sampler = EpochSampler(len(dataset), seed=cfg.train.seed)
        # A generator of its own: a DataLoader draws its workers' base seed from it at every epoch,
        # which would otherwise move the global RNG (the model's samplers) differently on resume.
        loader = DataLoader(dataset, batch_size=bs, sampler=sampler, collate_fn=collate_windows,
                            num_workers=cfg.data.num_workers, persistent_workers=False,
                            generator=torch.Generator().manual_seed(cfg.train.seed),
                            worker_init_fn=_ignore_sigint if cfg.data.num_workers else None)
        log_path = self.work_dir / "log.jsonl"
        n_syn = len(dataset.synthetic) if dataset.synthetic is not None else 0
        limit = total if self.max_iters is None else min(total, self.max_iters)
        self.log(f"stage {stage.name}: levels {stage.levels}, {dataset.num_windows} windows + {n_syn} synthetic "
                 f"+ {dataset.negatives} bridge-free per epoch = {per_epoch} iterations x {stage.epochs} epochs "
                 f"= {total} iterations; "
                 f"warm-up {warmup}, lr {stage.lr:g} x0.1 at epochs {stage.lr_steps}")
        bar = tqdm(total=limit, initial=min(iteration, limit), desc=f"{stage.name}", disable=not self.progress,
                   dynamic_ncols=True, leave=False)
        timer_start, timer_iters = None, 0
        stopped = False
        with frozen_except(model, params) if stage.parts else contextlib.nullcontext():
            try:
                while epoch < stage.epochs and iteration < limit:
                    model.train()
                    for m in modules:
                        m.train()
                    dataset.set_epoch(epoch)
                    sampler.set_epoch(epoch, skip=in_epoch * bs)
                    for batch in loader:
                        lr = lr_at(stage, warmup, cfg.optim.warmup_ratio, epoch, iteration)
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
                        in_epoch += 1
                        now = time.monotonic()
                        if timer_start is None:
                            timer_start = now  # the first iteration (start-up, workers) is not timed
                        else:
                            timer_iters += 1
                        s_per_it = (now - timer_start) / timer_iters if timer_iters else None
                        loss_value = float(loss.detach())
                        values = {k: round(float(v.detach()), 5) for k, v in losses.items()}
                        bar.update(1)
                        eta = self._eta(s_per_it, limit - iteration)
                        bar.set_postfix_str(f"loss {loss_value:.3f} lr {lr:.1e} epoch {epoch + 1}/{stage.epochs}"
                                            + (f" run left {eta[1]}" if eta else ""))
                        if iteration % cfg.train.log_interval == 0 or iteration == 1:
                            entry = {"stage": stage.name, "epoch": epoch + 1, "iter": iteration, "lr": lr,
                                     "loss": round(loss_value, 5), **values, "time": time.time()}
                            if s_per_it is not None:
                                entry["s_per_iter"] = round(s_per_it, 3)
                            with log_path.open("a") as f:
                                f.write(json.dumps(entry) + "\n")
                            if not self.progress:
                                self.log(f"{stage.name} it {iteration}/{limit} epoch {epoch + 1}/{stage.epochs} "
                                         f"loss {loss_value:.3f} lr {lr:.2e}"
                                         + (f" {s_per_it:.2f} s/it, stage left {eta[0]}, run left {eta[1]}" if eta else ""))
                        if self.on_iteration is not None:
                            self.on_iteration(self, iteration)
                        if cfg.train.checkpoint_every and iteration % cfg.train.checkpoint_every == 0:
                            save_latest()
                        if (stop is not None and stop.requested) or iteration >= limit:
                            stopped = True
                            break
                    if in_epoch >= per_epoch:
                        done = epoch + 1
                        epoch, in_epoch = done, 0
                        if done % cfg.train.checkpoint_interval == 0 or done == stage.epochs:
                            save_checkpoint(stage_dir / f"epoch_{done}.pth", model,
                                            meta={"stage": stage.name, "epoch": done, "iteration": iteration})
                        save_latest()
                    if stopped:
                        break
            except KeyboardInterrupt:  # a second Ctrl-C, or one outside the main thread: no consistent state
                bar.close()
                self.log(f"stage {stage.name}: aborted; resume from the last saved {latest}")
                raise
        bar.close()
        path = save_latest()
        if stop is not None and stop.requested:
            self.log(f"stage {stage.name}: interrupted at iteration {iteration}/{total}; saved {path}; "
                     "run the same command again to resume")
            raise TrainingInterrupted(path, iteration)
        if iteration >= total:
            save_checkpoint(stage_dir / "final.pth", model, meta={"stage": stage.name, "iteration": iteration})
            return True
        self.log(f"stage {stage.name}: stopped at iteration {iteration}/{total} (--max-iters); saved {path}")
        return False

    def _eta(self, s_per_it: float | None, left_in_stage: int) -> tuple[str, str] | None:
        if s_per_it is None:
            return None
        stage_left = s_per_it * left_in_stage
        return _format_seconds(stage_left), _format_seconds(stage_left + s_per_it * self._remaining_after)


def train(
    cfg: ExperimentConfig,
    data: str | Path | list[DotaImage],
    work_dir: str | Path,
    device: str = "cpu",
    stages: list[str] | None = None,
    max_iters: int | None = None,
    epochs: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    on_iteration: Callable[[Trainer, int], None] | None = None,
) -> Path:
    if epochs is not None:  # a shorter (or longer) run keeps the schedule's shape
        cfg = replace(cfg, stages=[
            replace(s, epochs=epochs, lr_steps=[max(1, round(e * epochs / s.epochs)) for e in s.lr_steps])
            for s in cfg.stages
        ])
    trainer = Trainer(cfg, data, work_dir, device, max_iters=max_iters, progress=progress, log=log,
                      on_iteration=on_iteration)
    return trainer.run(stages)
