"""hbdnet's own model files: the model configuration travels with the weights. Two formats:

* ``.pth`` (training and conversion): ``{"format": "hbdnet", "version": 1, "config": <HBDNetConfig
  as plain data>, "state_dict": ..., "meta": {...}}``; training checkpoints add ``"training"``
  (optimizer, epoch, iteration, RNG) but load as models all the same. Only plain data is pickled,
  so files load with ``weights_only=True``.
* ``.safetensors`` (shipping; :func:`save_safetensors`, ``hbdnet export``): the weights as
  safetensors, float32 or float16, with string metadata ``format``, ``version``, ``config`` (JSON),
  ``meta`` (JSON, with the default operating point ``score_thr`` when one was chosen) and
  ``dtype``. Reading it never unpickles anything. It may also hold the detectors' convolutional
  trunks quantized to int8 (ONNX graphs made from these very weights, ``hbdnet export --int8``),
  as byte tensors ``int8_trunk.<detector>``: :func:`read_int8_trunks`.

:func:`read_checkpoint` and :func:`load_model` take either. Models shipped with the package are
``hbdnet/weights/NAME.safetensors``, found by :func:`bundled_model_path`; :func:`resolve_model_path`
accepts a path or such a name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch

from hbdnet.config_io import from_dict, to_dict
from hbdnet.models.hbdnet import HBDNet, HBDNetConfig

FORMAT = "hbdnet"
VERSION = 1
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SAFETENSORS_SUFFIX = ".safetensors"
INT8_TRUNK_PREFIX = "int8_trunk."


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


FP16_MIN_NUMEL = 16384


def save_safetensors(
    path: str | Path,
    model: HBDNet,
    meta: dict[str, Any] | None = None,
    score_thr: float | None = None,
    dtype: Literal["float32", "float16"] = "float32",
    int8_trunks: dict[str, bytes] | None = None,
) -> Path:
    """Write ``model`` as safetensors with its config and ``meta`` (``score_thr``: the default
    operating point, stored in ``meta``). ``dtype="float16"`` about halves the file: the weight
    tensors of at least ``FP16_MIN_NUMEL`` elements are stored in float16, the small ones (biases,
    BatchNorm, the heads' predictors: a fraction of the size, and where rounding moves boxes and
    scores most) stay float32; integer tensors (BatchNorm counters) keep their type."""
    from safetensors.torch import save_file

    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    target = torch.float16 if dtype == "float16" else torch.float32
    tensors = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.to(target if value.numel() >= FP16_MIN_NUMEL else torch.float32)
        tensors[key] = value.contiguous()
    for name, graph in (int8_trunks or {}).items():
        tensors[INT8_TRUNK_PREFIX + name] = torch.frombuffer(bytearray(graph), dtype=torch.uint8)
    meta = dict(meta or {})
    if score_thr is not None:
        if not 0.0 <= score_thr <= 1.0:
            raise ValueError(f"score_thr must be in [0, 1], got {score_thr}")
        meta["score_thr"] = float(score_thr)
    header = {
        "format": FORMAT,
        "version": str(VERSION),
        "config": json.dumps(to_dict(model.cfg)),
        "meta": json.dumps(meta),
        "dtype": dtype,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    tmp.replace(path)
    return path


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT:
                raise CheckpointError(f"{path} is a safetensors file without hbdnet's metadata (format, config)")
            state = {k: f.get_tensor(k) for k in f.keys() if not k.startswith(INT8_TRUNK_PREFIX)}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from err
    try:
        config = json.loads(header["config"])
        meta = json.loads(header.get("meta", "{}"))
        version = int(header.get("version", VERSION))
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: broken hbdnet metadata ({err})") from err
    # Stored float16 weights are widened: the model computes in float32.
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return {"format": FORMAT, "version": version, "config": config, "state_dict": state, "meta": meta,
            "dtype": header.get("dtype", "float32")}


def read_int8_trunks(path: str | Path) -> dict[str, bytes]:
    """The int8 trunk graphs stored in a ``.safetensors`` model file, by detector name (``local``,
    ``global.0``, ...); empty for a file without them and for a ``.pth``."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.suffix != SAFETENSORS_SUFFIX:
        return {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k.removeprefix(INT8_TRUNK_PREFIX): f.get_tensor(k).numpy().tobytes()
                    for k in f.keys() if k.startswith(INT8_TRUNK_PREFIX)}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from err


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A ``.pth`` or ``.safetensors`` hbdnet model file as ``{"config", "state_dict", "meta", ...}``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    if path.suffix == SAFETENSORS_SUFFIX:
        return _read_safetensors(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for non-checkpoint files
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an hbdnet checkpoint; convert the authors' mmrotate checkpoint with `hbdnet convert`"
        )
    return ckpt


def bundled_models() -> list[str]:
    """Names of the models shipped in ``hbdnet/weights/``."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob(f"*{SAFETENSORS_SUFFIX}"))


def bundled_model_path(name: str = "default") -> Path:
    """``hbdnet/weights/<name>.safetensors``; :class:`CheckpointError` naming the shipped ones if absent."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise CheckpointError(f"not a model name: {name!r}")
    path = WEIGHTS_DIR / f"{name}{SAFETENSORS_SUFFIX}"
    if not path.is_file():
        have = bundled_models()
        raise CheckpointError(
            f"no bundled model {name!r} in {WEIGHTS_DIR}"
            + (f" (bundled: {', '.join(have)})" if have else " (none is bundled in this install)")
        )
    return path


def resolve_model_path(spec: str | Path) -> Path:
    """A model file path as given, or the bundled model of that name (``default``)."""
    path = Path(spec)
    if path.is_file():
        return path
    if isinstance(spec, str) and path.suffix not in (".pth", ".pt", SAFETENSORS_SUFFIX) and len(path.parts) == 1:
        return bundled_model_path(spec)
    raise CheckpointError(f"model file not found: {path}")


def _without_pretrained(cfg: HBDNetConfig) -> HBDNetConfig:
    from dataclasses import replace

    return replace(
        cfg,
        local=replace(cfg.local, pretrained=False, backbone_weights=None),
        global_detector=replace(cfg.global_detector, pretrained=False, backbone_weights=None),
    )


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[HBDNet, dict[str, Any]]:
    """The model stored in ``path`` (``.pth`` or ``.safetensors``; in eval mode, on ``device``) and its meta.

    The meta of a shipped model carries its default operating point as ``meta["score_thr"]``.
    """
    ckpt = read_checkpoint(path)
    cfg = from_dict(HBDNetConfig, ckpt["config"])
    model = HBDNet(_without_pretrained(cfg))  # the file holds every weight: no ImageNet file is read
    model.cfg = cfg
    missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit the model they describe (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model.to(device).eval(), dict(ckpt.get("meta", {}))
