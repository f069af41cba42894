"""bfloat16 leaves a trained model's detections unchanged: NWPU val through the engine, against float32.

On the CPU (torch's CPU autocast runs the same bfloat16 products a GPU would). The model is the
bundled default where it is installed, else the light model a training run is writing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from hbdnet.boxes.iou import box_iou_rotated
from hbdnet.data.dota import load_dota_folder
from hbdnet.evaluation.rotated_map import evaluate
from serving.engine.detectors import ModelSpec
from serving.evaluate import detect_images
from serving.model_ref import model_ref

ROOT = Path(__file__).resolve().parents[3]
SHARED = Path(os.environ.get("HBDNET_SHARED_DATA", ROOT / ".." / "shared" / "data"))
NWPU_VAL = SHARED / "nwpu-bridges" / "val"
MODELS = [ROOT / "hbdnet" / "weights" / "default.safetensors", ROOT / "runs" / "hbdnet_lite_nwpu" / "global" / "latest.pth"]
MODEL = next((p for p in MODELS if p.is_file()), None)
TOP_SCORE = 0.3  # the boxes that must match: every one a user would see at a usual threshold

pytestmark = [
    pytest.mark.skipif(not NWPU_VAL.is_dir(), reason="../shared/data/nwpu-bridges/val is not here"),
    pytest.mark.skipif(MODEL is None, reason="no trained model (hbdnet/weights/default.safetensors) here"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # JPEGs: striped, no georeference
]


def both(images):
    """(float32, bfloat16) merged detections of ``images``, both in PyTorch (on a CPU the shipped file
    would otherwise run its int8 trunk in float32: ``--runtime auto``)."""
    return [detect_images(images, model_ref(ModelSpec(str(MODEL), "cpu", precision=p, runtime="torch")))
            for p in ("float32", "bfloat16")]


def assert_top_boxes_matched(ref, got) -> None:
    for (b32, s32), (b16, s16) in zip(ref, got, strict=True):
        top = s32 >= TOP_SCORE
        if not top.any():
            continue
        assert len(b16), "bfloat16 lost every box"
        iou = box_iou_rotated(b32[top].float(), b16.float())
        best = iou.max(1)
        assert (best.values >= 0.9).all(), f"top boxes moved: IoU {best.values.tolist()}"
        assert torch.allclose(s32[top], s16[best.indices], atol=0.05)


def test_bfloat16_keeps_the_boxes_of_one_image():
    images = [img for img in load_dota_folder(NWPU_VAL) if img.image_path.stem == "170"]
    ref, got = both(images)
    assert (ref[0][1] >= TOP_SCORE).any()  # the image has boxes to compare
    assert not torch.equal(ref[0][1], got[0][1])  # and bfloat16 did run: the scores are not bit-equal
    assert_top_boxes_matched(ref, got)


@pytest.mark.slow
def test_bfloat16_ap50_on_nwpu_val_within_0_005_of_float32():
    images = load_dota_folder(NWPU_VAL)
    ref, got = both(images)
    gts = [(img.boxes.double(), img.difficult) for img in images]
    ap32, ap16 = evaluate(ref, gts)["AP50"], evaluate(got, gts)["AP50"]
    assert abs(ap32 - ap16) <= 0.005, (ap32, ap16)
    assert_top_boxes_matched(ref, got)
