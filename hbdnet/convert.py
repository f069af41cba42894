"""Conversion of the authors' released mmrotate checkpoint into an hbdnet checkpoint (method doc section 11).

Two key families exist:

* released model (``RotatedTwoStageDetectorImgFPN2``): ``backbone``, ``neck``, ``rpn_head``, ``roi_head``
  (local) and ``global_backbone`` ... ``global_roi_head`` (one detector shared by all coarse levels);
* per-level merge of ``tools/loadckpt_backbone.py``: ``backbone_d2`` ... ``roi_head_d16`` (one detector per
  coarse level: d2 = level 1, d4 = level 2, d8 = level 3, d16 = level 4).

Our module names were chosen so that, below the detector prefix, keys are the authors' keys.
``fusion_convs`` are kept when IFF is on and reported otherwise (the released inference never used them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from hbdnet.models.hbdnet import HBDNet, HBDNetConfig

PARTS = ("backbone", "neck", "rpn_head", "roi_head")
_PER_LEVEL = re.compile(r"^(backbone|neck|rpn_head|roi_head)_d(2|4|8|16)\.(.+)$")
_GLOBAL = re.compile(r"^global_(backbone|neck|rpn_head|roi_head)\.(.+)$")
_LOCAL = re.compile(r"^(backbone|neck|rpn_head|roi_head)\.(.+)$")


class ConversionError(ValueError):
    pass


@dataclass
class ConversionReport:
    family: str
    loaded: int = 0
    unmatched: list[str] = field(default_factory=list)  # in the checkpoint, no place in the model
    missing: list[str] = field(default_factory=list)  # in the model, not in the checkpoint
    misshaped: list[str] = field(default_factory=list)  # "key: checkpoint shape vs model shape"
    unused_fusion: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.unmatched or self.missing or self.misshaped)

    def lines(self) -> list[str]:
        out = [f"key family: {self.family}", f"loaded tensors: {self.loaded}"]
        for title, items in (
            ("unmatched checkpoint keys", self.unmatched),
            ("model keys missing from the checkpoint", self.missing),
            ("mis-shaped keys", self.misshaped),
            ("fusion_convs keys not used (IFF off)", self.unused_fusion),
        ):
            if items:
                out.append(f"{title} ({len(items)}):")
                out.extend(f"  {k}" for k in items)
        return out


def read_authors_state_dict(path: str | Path, trust_pickle: bool = False) -> dict[str, Tensor]:
    """The tensors of an mmcv checkpoint: ``{'state_dict': ...}`` or a bare state dict, ``module.`` stripped."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as err:
        hint = "" if trust_pickle else " (if it is a trusted file whose meta pickles numpy objects, add --trust-pickle)"
        raise ConversionError(f"cannot read {path}: {type(err).__name__}: {err}{hint}") from err
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, dict) or not all(isinstance(v, Tensor) for v in ckpt.values()):
        raise ConversionError(f"{path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in ckpt.items()}


def detect_family(keys: list[str]) -> str:
    if any(_PER_LEVEL.match(k) for k in keys):
        return "per_level"
    if any(_GLOBAL.match(k) for k in keys):
        return "shared"
    if any(_LOCAL.match(k) for k in keys):
        return "local_only"
    raise ConversionError("no Oriented R-CNN keys (backbone/neck/rpn_head/roi_head) in the checkpoint")


def map_key(key: str, use_iff: bool) -> str | None:
    """Our key for an authors' key, or None when it has no place."""
    if m := _PER_LEVEL.match(key):
        index = {"2": 0, "4": 1, "8": 2, "16": 3}[m.group(2)]
        return f"global_detectors.{index}.{m.group(1)}.{m.group(3)}"
    if m := _GLOBAL.match(key):
        return f"global_detectors.0.{m.group(1)}.{m.group(2)}"
    if m := _LOCAL.match(key):
        return f"local_detector.{m.group(1)}.{m.group(2)}"
    if key.startswith("fusion_convs.") and use_iff:
        return f"fusion.{key}"
    return None


def convert_state_dict(
    authors: dict[str, Tensor], base: HBDNetConfig | None = None, use_iff: bool = False
) -> tuple[HBDNet, ConversionReport]:
    """Build an HBD-Net whose structure follows the checkpoint's key family and load its tensors."""
    family = detect_family(list(authors))
    cfg = replace(base or HBDNetConfig(), use_iff=use_iff)
    if family == "per_level":
        cfg = replace(cfg, global_mode="per_level", num_global_levels=4)
    else:
        cfg = replace(cfg, global_mode="shared")
    model = HBDNet(cfg)
    target = model.state_dict()
    report = ConversionReport(family)
    new_state: dict[str, Tensor] = {}
    seen: set[str] = set()  # model keys the checkpoint addressed, loaded or not
    for key, value in authors.items():
        ours = map_key(key, use_iff)
        if ours is None:
            (report.unused_fusion if key.startswith("fusion_convs.") else report.unmatched).append(key)
        elif ours not in target:
            report.unmatched.append(key)
        elif tuple(target[ours].shape) != tuple(value.shape):
            seen.add(ours)
            report.misshaped.append(f"{key}: {tuple(value.shape)} vs {tuple(target[ours].shape)}")
        else:
            new_state[ours] = value
    report.missing = sorted(
        k for k in target if k not in new_state and k not in seen and not k.endswith("num_batches_tracked")
    )
    if family == "local_only":
        # A plain Oriented R-CNN checkpoint: its weights serve both detectors, as in stage-wise training.
        for key in list(report.missing):
            if key.startswith("global_detectors.0."):
                local_key = "local_detector." + key.removeprefix("global_detectors.0.")
                if local_key in new_state:
                    new_state[key] = new_state[local_key]
                    report.missing.remove(key)
    model.load_state_dict(new_state, strict=False)
    report.loaded = len(new_state)
    return model, report
