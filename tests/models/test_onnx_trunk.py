"""The convolutional trunk exported to ONNX Runtime gives the detections of the PyTorch model, on real
windows of every shape the engine feeds it (full windows, edge windows, coarse levels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hbdnet.boxes.iou import box_iou_rotated
from hbdnet.checkpoint import bundled_model_path, bundled_models
from hbdnet.inference import load_window_detector

pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.skipif("default" not in bundled_models(), reason="no bundled default model")


@pytest.fixture(scope="module")
def detectors():
    path = bundled_model_path("default")
    return load_window_detector(path, "cpu", runtime="torch"), load_window_detector(path, "cpu", runtime="onnx")


def test_the_trunk_gives_the_models_features_for_any_window_shape(detectors, autzen_windows):
    torch_side, onnx_side = detectors
    for image, window in autzen_windows:
        detector = torch_side.model.detector_for_level(window.level)
        trunk = onnx_side.model.detector_for_level(window.level).trunk
        batch, _ = detector.preprocess([torch.from_numpy(image)])
        with torch.inference_mode():
            features = detector.extract_features(batch)
            logits, deltas = detector.rpn_head.head(features)
        got_features, (got_logits, got_deltas) = trunk(batch)
        for want, got in zip([*features, *logits, *deltas], [*got_features, *got_logits, *got_deltas], strict=True):
            assert got.shape == want.shape, window
            assert torch.allclose(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max())), window


def test_detections_are_the_models(detectors, autzen_windows):
    torch_side, onnx_side = detectors
    assert (torch_side.runtime, onnx_side.runtime) == ("torch", "onnx")
    images, plan = zip(*autzen_windows)
    want = torch_side.detect(list(images), list(plan))
    got = onnx_side.detect(list(images), list(plan))
    compared = 0
    for (wb, ws, _), (gb, gs, _) in zip(want, got, strict=True):
        keep = ws >= 0.3  # every box a user would see at a usual threshold, and then some
        if not keep.any():
            continue
        iou = box_iou_rotated(torch.from_numpy(wb[keep]).float(), torch.from_numpy(gb).float())
        best, j = iou.max(dim=1)
        assert (best >= 0.99).all(), best
        assert np.allclose(gs[j.numpy()], ws[keep], atol=1e-3)
        compared += int(keep.sum())
    assert compared >= 3  # the footbridge's window has boxes to compare


def test_runtime_choice():
    path = bundled_model_path("default")
    assert load_window_detector(path, "cpu", runtime="onnx").runtime == "onnx"
    with pytest.raises(ValueError, match="runtime onnx runs a float32 model"):
        load_window_detector(path, "cpu", "bfloat16", runtime="onnx")
    with pytest.raises(ValueError, match="runtime must be one of"):
        load_window_detector(path, "cpu", runtime="tensorrt")
