"""HBD-Net behind the engine's window-detector interface (``serving.engine.detectors.WindowDetector``)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from hbdnet.checkpoint import load_model, read_int8_trunks, resolve_model_path
from hbdnet.heap import release_free_heap, tune_heap_for_cpu
from hbdnet.models.deploy import inference_form
from hbdnet.models.hbdnet import HBDNet
from hbdnet.models.onnx_trunk import RUNTIMES, onnxruntime_available, trunk_detectors, use_onnx_trunks
from hbdnet.precision import model_precision, resolve_precision, set_precision
from hbdnet.pyramid import PlanWindow
from hbdnet.transfer import HostToDevice, StagedImage

WindowResult = tuple[np.ndarray, np.ndarray, np.ndarray]


class HBDNetWindowDetector:
    """Runs the detector of each window's pyramid level on batches of windows.

    Images are uint8 RGB ``(3, h, w)`` arrays, or images already sent on their way to the device by
    ``prepare`` (on a GPU the engine calls it in its reading threads, so that uploads overlap the
    forward passes: ``prepare_ahead``); results are le90 boxes in window pixels. The precision of the
    forward pass is the model's (``hbdnet.precision.set_precision``).
    """

    def __init__(self, model: HBDNet, name: str, device: torch.device, meta: dict | None = None,
                 runtime: str = "torch"):
        self.model = model
        self.name = name
        self.device = device
        self.meta = dict(meta or {})
        self.precision = str(model_precision(model)).removeprefix("torch.")
        self.runtime = runtime
        self._transfer = HostToDevice(device)
        self.prepare_ahead = self._transfer.asynchronous
        # A model with inter-layer fusion needs the coarser crops around each level-0 window.
        self.context_levels = model.cfg.iff_context_levels if model.fusion is not None else 0
        self.context_size = model.cfg.window

    @property
    def default_score_thr(self) -> float | None:
        """The operating point stored with the weights (``hbdnet export --score-thr``), if any."""
        value = self.meta.get("score_thr")
        return None if value is None else float(value)

    def prepare(self, image: np.ndarray) -> StagedImage:
        """Start sending one window image to the model's device (from any thread)."""
        return self._transfer.stage(image)

    @torch.inference_mode()
    def detect(
        self,
        images: list[np.ndarray | StagedImage],
        windows: list[PlanWindow],
        contexts: list[list[tuple[np.ndarray, tuple[float, float, float, float]]]] | None = None,
    ) -> list[WindowResult]:
        """``contexts[i]``: for window i, ``context_levels`` pairs (crop image, footprint rel box)."""
        from hbdnet.models.hbdnet import WindowContext

        results: list[WindowResult | None] = [None] * len(images)
        by_level: dict[int, list[int]] = defaultdict(list)
        for i, win in enumerate(windows):
            by_level[win.level].append(i)
        staged = [self.prepare(im) for im in images]  # no-op for images prepared already
        for level, idx in by_level.items():
            batch = [staged[i].ready() for i in idx]
            context = None
            if level == 0 and self.context_levels:
                if contexts is None:
                    raise ValueError("this model fuses features across levels: the reader must supply context crops")
                crops = [[self.prepare(contexts[i][r][0]).ready() for i in idx]
                         for r in range(self.context_levels)]
                rel = torch.tensor([[contexts[i][r][1] for r in range(self.context_levels)] for i in idx])
                context = WindowContext(crops, rel)
            for i, det in zip(idx, self.model.detect(batch, level, context=context)):
                results[i] = (
                    det["boxes"].float().cpu().numpy(),
                    det["scores"].float().cpu().numpy(),
                    det["labels"].cpu().numpy(),
                )
        if self.device.type == "cpu":
            release_free_heap()
        return results  # type: ignore[return-value]


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> ``cuda`` when this process sees a GPU, else ``cpu``; ``ValueError`` for CUDA asked
    for where there is none."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was asked for but torch sees no GPU (use --device cpu)")
    return device


def load_window_detector(path: str | Path, device: str | torch.device = "cpu",
                         precision: str = "auto", runtime: str = "auto") -> HBDNetWindowDetector:
    """The detector of a model file (``.pth`` or ``.safetensors``) or of a bundled model's name.

    ``precision``: ``auto`` (bfloat16 on a GPU that has it, else float32), ``float32`` or ``bfloat16``
    (``hbdnet.precision``). ``runtime`` (``hbdnet.models.onnx_trunk``) runs the convolutional trunk:
    ``torch``; ``onnx``, its float32 export in ONNX Runtime; ``int8``, the int8 trunk stored in the
    model file (``hbdnet export --int8``) in ONNX Runtime; ``auto``, ``int8`` where the file has it
    and the model runs on the CPU in float32, else ``torch``. The ONNX runtimes are for the CPU in
    float32 and a model without inter-layer fusion.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    dev = resolve_device(device)
    if dev.type == "cpu":
        tune_heap_for_cpu()
    dtype = resolve_precision(precision, dev)
    path = resolve_model_path(path)
    model, meta = load_model(path, dev)
    inference_form(model, dev)
    set_precision(model, dtype, dev.type)
    fits = dev.type == "cpu" and dtype == torch.float32 and bool(trunk_detectors(model))
    trunks = read_int8_trunks(path) if runtime in ("auto", "int8") and fits else {}
    if runtime == "auto":
        runtime = "int8" if trunks and onnxruntime_available() else "torch"
    if runtime in ("onnx", "int8"):
        if not fits:
            raise ValueError(f"runtime {runtime} runs a float32 model without inter-layer fusion on the CPU; "
                             f"this one is {dtype} on {dev} (use runtime torch)")
        if not onnxruntime_available():
            raise ValueError(f"runtime {runtime} needs ONNX Runtime: pip install onnxruntime")
        if runtime == "int8" and not trunks:
            raise ValueError(f"{path.name} holds no int8 trunk (make one with hbdnet export --int8; "
                             "or use runtime onnx or torch)")
        use_onnx_trunks(model, trunks if runtime == "int8" else None)
    return HBDNetWindowDetector(model, str(meta.get("name", Path(path).stem)), dev, meta, runtime)
