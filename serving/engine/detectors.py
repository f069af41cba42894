"""The detector interface the engine runs on batches of windows, and how a worker builds one.

A worker never receives a detector object: it receives a ``DetectorSpec`` (small, picklable) and
builds the detector itself with ``build_detector``, inside its own process and on its own device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from hbdnet.pyramid import PlanWindow

# One window's result: boxes (N, 5) le90 (cx, cy, w, h, theta) in window pixels, scores (N,), labels (N,).
WindowResult = tuple[np.ndarray, np.ndarray, np.ndarray]

DetectorKind = Literal["noop", "perfect", "model"]


class WindowDetector(Protocol):
    name: str

    def detect(self, images: list[np.ndarray], windows: list[PlanWindow]) -> list[WindowResult]:
        """``images[i]`` is the uint8 (3, h, w) RGB of ``windows[i]``; one result per window."""
        ...


@dataclass(frozen=True, eq=False)
class DetectorSpec:
    """What to build inside a worker.

    * ``"noop"``: finds nothing (for measuring the reading pipeline).
    * ``"perfect"``: ``serving.testing.simulate.PerfectDetector`` over ``ground_truth`` ((N, 5) le90 boxes in
      scene pixels): a test double that returns the visible parts of those boxes in each window.
    * ``"model"``: an HBD-Net checkpoint at ``path`` on ``device``, loaded by
      ``hbdnet.inference.load_window_detector``. ``device="auto"`` is resolved by the process that
      builds the detector (``resolve_device``), so each Ray actor uses the GPU it was given, and a
      CPU-only driver that joins a GPU cluster does not decide for the cluster. ``precision``
      (``hbdnet.precision``): ``auto`` is bfloat16 on a GPU that has it, float32 on a CPU; resolved
      where the model runs, like the device.
    """

    kind: DetectorKind = "noop"
    path: str | None = None
    device: str = "cpu"
    ground_truth: Any = None
    precision: str = "auto"


class NoopDetector:
    """Returns no detections. The windows are still read: the reader runs before ``detect``."""

    name = "noop"

    def detect(self, images: list[np.ndarray], windows: list[PlanWindow]) -> list[WindowResult]:
        return [(np.zeros((0, 5), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
                for _ in images]


class PerfectWindowDetector:
    """``serving.testing.simulate.PerfectDetector`` (one window at a time, ignores pixels) as a WindowDetector."""

    name = "perfect"

    def __init__(self, ground_truth: np.ndarray):
        from serving.testing.simulate import PerfectDetector

        self._perfect = PerfectDetector(np.asarray(ground_truth, dtype=np.float64).reshape(-1, 5))

    def detect(self, images: list[np.ndarray], windows: list[PlanWindow]) -> list[WindowResult]:
        results = [self._perfect(w) for w in windows]
        return [(d.boxes, d.scores, d.labels) for d in results]


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when this process sees a GPU, else ``cpu``; other values as they are."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def uses_gpu(spec: DetectorSpec) -> bool:
    """Whether the detector runs on a GPU where one is available: a model not pinned to the CPU."""
    return spec.kind == "model" and spec.device != "cpu"


def build_detector(spec: DetectorSpec) -> WindowDetector:
    """Build the detector ``spec`` describes. Imports are lazy: a noop worker never imports torch."""
    if spec.kind == "noop":
        return NoopDetector()
    if spec.kind == "perfect":
        if spec.ground_truth is None:
            raise ValueError("DetectorSpec(kind='perfect') needs ground_truth boxes (N, 5)")
        return PerfectWindowDetector(spec.ground_truth)
    if spec.kind == "model":
        if spec.path is None:
            raise ValueError("DetectorSpec(kind='model') needs a checkpoint path")
        from hbdnet.inference import load_window_detector

        return load_window_detector(spec.path, resolve_device(spec.device), spec.precision)
    raise ValueError(f"unknown detector kind {spec.kind!r}; expected 'noop', 'perfect' or 'model'")
