"""The detector interface the engine runs on batches of windows, and the specs workers build one from.

A worker never receives a detector object: it receives a ``DetectorSpec`` (small, picklable) and
calls its ``build()`` inside its own process and on its own device. The engine knows no detector by
name: the caller passes the spec in (``ModelSpec`` for an HBD-Net model file, ``NoopSpec`` to
measure the reading alone; tests bring their own, ``serving.testing.simulate.PerfectSpec``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from hbdnet.pyramid import PlanWindow

# One window's result: boxes (N, 5) le90 (cx, cy, w, h, theta) in window pixels, scores (N,), labels (N,).
WindowResult = tuple[np.ndarray, np.ndarray, np.ndarray]


class WindowDetector(Protocol):
    name: str

    def detect(self, images: list[np.ndarray], windows: list[PlanWindow]) -> list[WindowResult]:
        """``images[i]`` is the uint8 (3, h, w) RGB of ``windows[i]``; one result per window."""
        ...


class DetectorSpec(Protocol):
    """What a worker builds its detector from: picklable, small, built where it runs.

    ``name`` names the detector in outputs; ``uses_gpu`` says whether it runs on a GPU where one is
    available (decided without importing torch); ``fingerprint()`` identifies its weights (sha256
    hex) for a detector that is not a model file.
    """

    name: str
    uses_gpu: bool

    def build(self) -> WindowDetector: ...

    def fingerprint(self) -> str: ...


@dataclass(frozen=True)
class ModelSpec:
    """An HBD-Net model file at ``path``, run on ``device`` in ``precision``.

    ``device="auto"`` is resolved by the process that builds the detector
    (``hbdnet.inference.resolve_device``), so each Ray actor uses the GPU it was given, and a CPU-only
    driver that joins a GPU cluster does not decide for the cluster. ``precision``
    (``hbdnet.precision``): ``auto`` is bfloat16 on a GPU that has it, float32 on a CPU; resolved where
    the model runs, like the device. ``runtime`` (``hbdnet.inference.load_window_detector``): what
    runs the convolutional trunk, ``auto``, ``torch``, ``onnx`` or ``int8``; resolved where the model runs.
    """

    path: str
    device: str = "cpu"
    precision: str = "auto"
    runtime: str = "auto"

    @property
    def name(self) -> str:
        return Path(self.path).stem

    @property
    def uses_gpu(self) -> bool:
        return self.device != "cpu"

    def build(self) -> WindowDetector:
        from hbdnet.inference import load_window_detector, resolve_device  # torch: only where a model runs

        return load_window_detector(self.path, resolve_device(self.device), self.precision, self.runtime)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()


class NoopDetector:
    """Returns no detections. The windows are still read: the reader runs before ``detect``."""

    name = "noop"

    def detect(self, images: list[np.ndarray], windows: list[PlanWindow]) -> list[WindowResult]:
        return [(np.zeros((0, 5), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
                for _ in images]


@dataclass(frozen=True)
class NoopSpec:
    """A detector that finds nothing, for measuring the reading pipeline."""

    name: str = "noop"
    uses_gpu: bool = False

    def build(self) -> WindowDetector:
        return NoopDetector()

    def fingerprint(self) -> str:
        return hashlib.sha256(b"noop").hexdigest()


def local_gpus(detector_spec: DetectorSpec) -> int:
    """The GPUs of this machine that the detector would use (0 for detectors that never use one,
    which are decided without importing torch)."""
    if not detector_spec.uses_gpu:
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
