"""int8 trunks for a model file: each detector's convolutional trunk quantized by ONNX Runtime, its
activation ranges calibrated on real windows (``hbdnet export --int8 DATA``).

The calibration windows are those each detector meets at inference, cut, resampled, normalised and
padded as the engine and the detector's transform do, from the images of a DOTA-format folder (the
training data, say), ``count`` of them spread evenly over the folder: level-0 windows for the local
detector, coarser levels for a global one. A folder of images no larger than a window has no coarse
level of its own, so the calibration pyramid goes on halving down to a quarter of the window: the
global detectors are calibrated on the images as a coarse level shows them (downsampled twice, four
times), not on full-resolution pixels, whose statistics differ. Even so, 8-bit activations lower the
shipped model's scores (``MODEL_CARD.md``): an int8 trunk is for models checked with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from hbdnet.data.dota import DotaImage, load_dota_folder
from hbdnet.data.windows import WindowConfig, WindowDataset
from hbdnet.models.hbdnet import HBDNet
from hbdnet.models.onnx_trunk import export_trunk, quantize_trunk, trunk_detectors
from hbdnet.models.transform import batch_images

CALIBRATION_WINDOWS = 32


class CalibrationError(ValueError):
    """No windows to calibrate on, or a model whose trunk cannot be exported."""


def calibration_windows(data: str | Path | list[DotaImage], window: int, overlap: int) -> WindowDataset:
    """Every window of every level of the images under ``data`` (``images/`` and ``labelTxt/``; or the
    images themselves), with or without bridges, the pyramid going on down to a quarter of the window."""
    try:
        images = data if isinstance(data, list) else load_dota_folder(data, missing_image="skip")
    except FileNotFoundError as err:
        raise CalibrationError(f"cannot calibrate on {data}: {err}") from err
    if not images:
        raise CalibrationError(f"no images to calibrate on under {data} (expected images/ and labelTxt/)")
    cfg = WindowConfig(window=window, overlap=overlap, max_side=window // 4, filter_empty=False)
    return WindowDataset(images, range(16), cfg)


def _batches(windows: WindowDataset, levels: Callable[[int], bool], count: int) -> Iterator[np.ndarray]:
    """``count`` windows of the levels that ``levels`` accepts, spread evenly over ``windows``."""
    entries = [i for i, e in enumerate(windows.entries) if levels(e.window.level)]
    if not entries:
        raise CalibrationError("no calibration window at the levels this detector runs")
    for k in np.unique(np.linspace(0, len(entries) - 1, num=min(count, len(entries))).round().astype(int)):
        batch, _ = batch_images([windows[entries[int(k)]].image])
        yield batch.numpy()


def int8_trunks(model: HBDNet, data: str | Path | list[DotaImage], count: int = CALIBRATION_WINDOWS,
                only: tuple[str, ...] | None = None) -> dict[str, bytes]:
    """The int8 trunk of every detector of ``model`` (float32, in its inference form, on the CPU), or
    of the detectors named in ``only`` (``local``, ``global.0`` ...; the others then run their float
    trunks), by detector name, calibrated on ``count`` windows of the images under ``data`` (or of
    ``data``, a list of images)."""
    detectors = trunk_detectors(model)
    if not detectors:
        raise CalibrationError("this model fuses features across levels: its trunks cannot run in ONNX Runtime")
    if only is not None:
        unknown = sorted(set(only) - set(detectors))
        if unknown:
            raise CalibrationError(f"no detector {', '.join(unknown)} in this model (it has "
                                   f"{', '.join(sorted(detectors))})")
        detectors = {name: d for name, d in detectors.items() if name in only}
    windows = calibration_windows(data, model.cfg.window, model.cfg.overlap)
    trunks = {}
    for name, detector in detectors.items():
        def runs(level: int, detector=detector) -> bool:
            return model.detector_for_level(level) is detector

        trunks[name] = quantize_trunk(export_trunk(detector), _batches(windows, runs, count))
    return trunks


def stored_int8_trunks(model: HBDNet, dtype: str, data: str | Path | list[DotaImage],
                       only: tuple[str, ...] | None = None) -> dict[str, bytes]:
    """The int8 trunks of ``model`` as a file of ``dtype`` stores it (its float16 weights, if so): the
    graphs then match the weights beside them once read back."""
    import tempfile

    import torch

    from hbdnet.checkpoint import load_model, save_safetensors
    from hbdnet.models.deploy import inference_form

    with tempfile.TemporaryDirectory(prefix="hbdnet-export-") as tmp:
        stored, _ = load_model(save_safetensors(Path(tmp) / "stored.safetensors", model, dtype=dtype))
    inference_form(stored, torch.device("cpu"))
    return int8_trunks(stored, data, only=only)
