"""bfloat16 autocast: where it runs, and that the detector's geometry stays float32 (on the CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hbdnet.models.build import build_oriented_rcnn
from hbdnet.models.hbdnet import HBDNet, HBDNetConfig
from hbdnet.precision import (AutocastForward, autocast_regions, model_precision, resolve_precision,
                              set_precision)

CPU = torch.device("cpu")


def test_resolve_precision():
    assert resolve_precision("auto", CPU) == torch.float32  # the CPU reference
    assert resolve_precision("float32", CPU) == torch.float32
    assert resolve_precision("bfloat16", CPU) == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16, got 'half'"):
        resolve_precision("half", CPU)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without a GPU")
def test_auto_on_cuda_without_a_gpu_does_not_touch_cuda():
    assert resolve_precision("auto", torch.device("cuda")) == torch.float32


def wrapped(model: nn.Module) -> set[str]:
    return {name for name, m in model.named_modules() if isinstance(m.__dict__.get("forward"), AutocastForward)}


def test_regions_are_the_heavy_products_and_not_the_geometry(make_tiny_config):
    det = build_oriented_rcnn(make_tiny_config())
    set_precision(det, torch.bfloat16, "cpu")
    # a ResNet backbone, the FPN and the two shared FCs; not the RPN, not the predictors
    assert wrapped(det) == {"backbone", "neck", "roi_head.bbox_head.shared_fcs.0",
                            "roi_head.bbox_head.shared_fcs.1"}
    assert model_precision(det) == torch.bfloat16
    before = {k: v.clone() for k, v in det.state_dict().items()}
    set_precision(det, torch.float32, "cpu")  # undoes it
    assert wrapped(det) == set() and model_precision(det) == torch.float32
    assert all(torch.equal(before[k], v) for k, v in det.state_dict().items())  # weights untouched


def test_efficientnet_backbone_stays_float32(make_tiny_config):
    det = build_oriented_rcnn(make_tiny_config(backbone="efficientnet_lite0", pretrained=False))
    assert det.backbone not in autocast_regions(det)
    assert det.neck in autocast_regions(det)
    set_precision(det, torch.bfloat16, "cpu")
    assert model_precision(det) == torch.bfloat16  # what the detector reports, its backbone float32 or not


def test_hbdnet_sets_every_detector(make_tiny_config):
    cfg = HBDNetConfig(local=make_tiny_config(), global_detector=make_tiny_config(), global_mode="per_level",
                       num_global_levels=2)
    model = HBDNet(cfg)
    set_precision(model, torch.bfloat16, "cpu")
    for det in (model.local_detector, *model.global_detectors):
        assert model_precision(det) == torch.bfloat16


def test_boxes_scores_and_roi_coordinates_stay_float32(make_tiny_config):
    """What RoIAlign samples at, what the RPN ranks and decodes, and what comes out are float32;
    the wrapped convolutions did run in bfloat16."""
    torch.manual_seed(0)
    det = build_oriented_rcnn(make_tiny_config()).eval()
    set_precision(det, torch.bfloat16, "cpu")
    seen: dict[str, torch.dtype] = {}

    def record(name):
        def hook(module, args, output):
            seen[name] = output.dtype if isinstance(output, torch.Tensor) else output[0].dtype
            if name == "roi_extractor":
                seen["roi_features_in"] = args[0][0].dtype
                seen["rois"] = args[1].dtype
        return hook

    det.roi_head.bbox_roi_extractor.register_forward_hook(record("roi_extractor"))
    det.rpn_head.rpn_cls.register_forward_hook(record("rpn_cls"))
    det.rpn_head.rpn_reg.register_forward_hook(record("rpn_reg"))
    det.roi_head.bbox_head.fc_reg.register_forward_hook(record("fc_reg"))
    det.backbone.layer1.register_forward_hook(record("inside_backbone"))
    images = [torch.randint(0, 255, (3, 160, 192), dtype=torch.uint8), torch.randint(0, 255, (3, 96, 128),
                                                                                      dtype=torch.uint8)]
    with torch.inference_mode():
        out = det(images)
    assert seen["inside_backbone"] == torch.bfloat16
    for name in ("roi_features_in", "rois", "rpn_cls", "rpn_reg", "fc_reg", "roi_extractor"):
        assert seen[name] == torch.float32, name
    for d in out:
        assert d["boxes"].dtype == d["scores"].dtype == torch.float32
