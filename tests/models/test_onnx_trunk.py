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
        keep = ws >= 0.2  # every box a user would see at a usual threshold, and then some
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


def test_the_exported_trunk_pads_inside_its_convolutions(detectors):
    """TensorFlow SAME padding (one pixel more after than before at stride 2) is the convolutions' own
    padding in the graph, not a padded copy of each activation; the features stay the model's
    (above) and a window that is not padded to the stride is refused, not computed wrongly."""
    import onnx

    from hbdnet.models.onnx_trunk import export_trunk

    torch_side, onnx_side = detectors
    graph = onnx.load_from_string(export_trunk(torch_side.model.local_detector))
    ops = {node.op_type for node in graph.graph.node}
    assert "Conv" in ops and "Pad" not in ops
    asymmetric = [list(a.ints) for n in graph.graph.node if n.op_type == "Conv" for a in n.attribute
                  if a.name == "pads" and list(a.ints)[:2] != list(a.ints)[2:]]
    assert sorted(map(tuple, asymmetric)) == [(0, 0, 1, 1)] * 3 + [(1, 1, 2, 2)] * 2  # the five stride-2 convs
    with pytest.raises(ValueError, match="padded to multiples of 32"):
        onnx_side.model.local_detector.trunk(torch.zeros(1, 3, 64, 80))


def test_a_detector_with_an_exported_trunk_lets_go_of_the_trunks_weights(detectors):
    """What ONNX Runtime computes is not also held in PyTorch: the backbone, FPN and RPN convs are on
    the meta device (no memory, and calling them fails), the RoI head keeps its weights."""
    torch_side, onnx_side = detectors
    for detector in (onnx_side.model.local_detector, *onnx_side.model.global_detectors):
        trunk = [detector.backbone, detector.neck, detector.rpn_head]
        assert {p.device.type for m in trunk for p in m.parameters()} == {"meta"}
        assert {p.device.type for p in detector.roi_head.parameters()} == {"cpu"}
    assert {p.device.type for p in torch_side.model.parameters()} == {"cpu"}
    with pytest.raises(RuntimeError, match="runs in ONNX Runtime"):
        onnx_side.model.local_detector.extract_features(torch.zeros(1, 3, 64, 64))


def test_a_pad_that_is_not_zeros_stays_in_the_graph():
    import onnx
    from onnx import TensorProto, helper

    from hbdnet.models.onnx_trunk import fold_pads

    def graph(value: float) -> bytes:
        nodes = [helper.make_node("Constant", [], ["amounts"], value=helper.make_tensor("a", TensorProto.INT64, [8],
                                                                                         [0, 0, 0, 0, 0, 0, 1, 1])),
                 helper.make_node("Constant", [], ["value"], value=helper.make_tensor("v", TensorProto.FLOAT, [], [value])),
                 helper.make_node("Pad", ["x", "amounts", "value"], ["padded"]),
                 helper.make_node("Conv", ["padded", "w"], ["y"], strides=[2, 2])]
        weight = helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 3, 3], [1.0] * 9)
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

    kept = onnx.load_from_string(fold_pads(graph(1.0)))
    assert [n.op_type for n in kept.graph.node if n.op_type in ("Pad", "Conv")] == ["Pad", "Conv"]
    folded = onnx.load_from_string(fold_pads(graph(0.0)))
    assert [n.op_type for n in folded.graph.node] == ["Conv"]
    assert [list(a.ints) for a in folded.graph.node[0].attribute if a.name == "pads"] == [[0, 0, 1, 1]]
