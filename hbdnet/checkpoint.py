"""hbdnet's own checkpoint files: the model configuration travels with the weights.

A checkpoint is ``{"format": "hbdnet", "version": 1, "config": <HBDNetConfig as plain data>,
"state_dict": ..., "meta": {...}}``; training checkpoints add ``"training"`` (optimizer, scheduler,
stage, epoch) but load as models all the same. Only plain data is pickled, so files load with
``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hbdnet.config_io import from_dict, to_dict
from hbdnet.models.hbdnet import HBDNet, HBDNetConfig

FORMAT = "hbdnet"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not an hbdnet checkpoint, or does not fit the model it describes."""


def checkpoint_dict(model: HBDNet, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": to_dict(model.cfg),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }


def save_checkpoint(path: str | Path, model: HBDNet, meta: dict[str, Any] | None = None, **extra: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({**checkpoint_dict(model, meta), **extra}, tmp)
    tmp.replace(path)  # a crash mid-write never leaves a truncated checkpoint behind
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for non-checkpoint files
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an hbdnet checkpoint; convert the authors' mmrotate checkpoint with `hbdnet convert`"
        )
    return ckpt


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[HBDNet, dict[str, Any]]:
    """The model stored in ``path`` (in eval mode, on ``device``) and the checkpoint's meta."""
    ckpt = read_checkpoint(path)
    cfg = from_dict(HBDNetConfig, ckpt["config"])
    model = HBDNet(cfg)
    missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit the model they describe (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model.to(device).eval(), dict(ckpt.get("meta", {}))
