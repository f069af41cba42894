"""Conversion fidelity without mmcv: the converted model reproduces mmrotate 0.3.4's outputs.

The fixture (``tests/models/fixtures/convert_golden.safetensors``) is made once by
``tools/make_convert_golden.py`` in a separate environment with the authors' stack: a tiny random
Oriented R-CNN in the authors' layout, one input, and the reference FPN maps, RPN proposals, RoI head
scores and boxes, and final detections. The committed fixture was made with torch 2.14.1, mmcv-full
1.7.2 (CPU ops), mmdet 2.28.2 and mmrotate 0.3.4 (angle version ``oc``). A wrong tensor mapping, a
scaled head weight or BGR input fails these tests.
"""

import copy
import json
from pathlib import Path

import pytest
import torch

from hbdnet.boxes.convention import oc_to_le90
from hbdnet.convert import convert_state_dict
from hbdnet.models.build import ModelConfig
from hbdnet.models.deploy import prepare_for_inference
from hbdnet.models.hbdnet import HBDNetConfig

FIXTURE = Path(__file__).parent / "fixtures" / "convert_golden.safetensors"

pytestmark = pytest.mark.skipif(not FIXTURE.is_file(), reason="no golden fixture (tools/make_convert_golden.py)")


@pytest.fixture(scope="module")
def golden():
    from safetensors import safe_open

    with safe_open(str(FIXTURE), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    authors = {k.removeprefix("authors."): v for k, v in tensors.items() if k.startswith("authors.")}
    mcfg = ModelConfig(**json.loads(meta["hbdnet_model"]))
    model, report = convert_state_dict(authors, HBDNetConfig(local=mcfg, global_detector=mcfg))
    assert report.ok, report.lines()
    return model.local_detector.eval(), tensors


def _same_boxes(ours, ref, atol):
    torch.testing.assert_close(ours[:, :4], ref[:, :4], rtol=1e-4, atol=atol)
    torch.testing.assert_close(torch.cos(2 * ours[:, 4]), torch.cos(2 * ref[:, 4]), rtol=0, atol=1e-3)
    torch.testing.assert_close(torch.sin(2 * ours[:, 4]), torch.sin(2 * ref[:, 4]), rtol=0, atol=1e-3)


@torch.no_grad()
def test_fpn_maps(golden):
    det, ref = golden
    batch, _ = det.preprocess([ref["input"]])
    for i, f in enumerate(det.extract_features(batch)):
        torch.testing.assert_close(f[0], ref[f"ref.fpn.{i}"], rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_rpn_proposals(golden):
    det, ref = golden
    batch, sizes = det.preprocess([ref["input"]])
    feats = det.extract_features(batch)
    logits, deltas = det.rpn_head.head(feats)
    anchors = det.rpn_head.anchor_generator.grid_anchors([f.shape[-2:] for f in feats], feats[0].device)
    boxes, scores = det.rpn_head.get_proposals(logits, deltas, anchors, sizes)[0]
    expected = ref["ref.proposals"]
    n = min(50, len(expected))
    assert len(boxes) == len(expected)
    torch.testing.assert_close(scores[:n], expected[:n, 5], rtol=1e-4, atol=1e-5)
    _same_boxes(oc_to_le90(boxes[:n]), oc_to_le90(expected[:n, :5]), atol=1e-2)


@torch.no_grad()
def test_roi_head_on_the_reference_proposals(golden):
    det, ref = golden
    batch, sizes = det.preprocess([ref["input"]])
    feats = det.extract_features(batch)
    cand = ref["ref.proposals"][:, :5]
    logits, deltas = det.roi_head._run_head(feats, [cand])
    torch.testing.assert_close(torch.softmax(logits, -1), ref["ref.roi_scores"], rtol=1e-4, atol=1e-5)
    boxes = det.roi_head.obb_coder.decode(cand, deltas, max_shape=sizes[0])
    _same_boxes(oc_to_le90(boxes), oc_to_le90(ref["ref.roi_boxes"]), atol=1e-2)


@pytest.mark.parametrize("form", ["trained", "inference"])
@torch.no_grad()
def test_detections(golden, form):
    """Also in the inference-only form the engine runs (BatchNorm folded, channels_last)."""
    det, ref = golden
    if form == "inference":
        det = prepare_for_inference(copy.deepcopy(det))
    out = det([ref["input"]])[0]
    expected = ref["ref.dets"]
    assert len(out["boxes"]) == len(expected)
    order = torch.argsort(out["scores"], descending=True)
    torch.testing.assert_close(out["scores"][order], expected[:, 5], rtol=1e-4, atol=1e-5)
    _same_boxes(out["boxes"][order], oc_to_le90(expected[:, :5]), atol=1e-2)
