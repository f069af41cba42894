import math
from pathlib import Path

import pytest
import torch

from hbdnet.models.anchors import AnchorGenerator
from hbdnet.models.rpn import OrientedRPNHead

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def features(size: int = 128, channels: int = 16, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, channels, size // s, size // s, generator=g) for s in (4, 8, 16, 32, 64)]


def targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[40.0, 50.0, 60.0, 16.0, 0.5]]), "labels": torch.tensor([0])},
        {"boxes": torch.zeros(0, 5), "labels": torch.zeros(0, dtype=torch.long)},
    ]


def head(**kw) -> OrientedRPNHead:
    """A small head; nms_pre 300 keeps the proposal NMS quick on random features."""
    kw.setdefault("nms_pre", 300)
    return OrientedRPNHead(in_channels=16, feat_channels=16, **kw)


def test_layer_shapes_match_the_checkpoint_layout():
    sd = OrientedRPNHead().state_dict()
    assert sd["rpn_conv.weight"].shape == (256, 256, 3, 3)
    assert sd["rpn_cls.weight"].shape == (3, 256, 1, 1)
    assert sd["rpn_reg.weight"].shape == (18, 256, 1, 1)
    assert set(sd) == {f"rpn_{n}.{p}" for n in ("conv", "cls", "reg") for p in ("weight", "bias")}


def test_reg_channels_are_anchor_major():
    rpn = head()
    with torch.no_grad():
        rpn.rpn_reg.weight.zero_()
        rpn.rpn_reg.bias.zero_()
        rpn.rpn_reg.bias[1 * 6 + 4] = 1.0  # anchor 1, delta 'da'
    _, deltas = rpn.head(features())
    d = deltas[0][0]  # (H*W*A, 6) of image 0, level 0
    a = torch.arange(d.shape[0]) % 3
    assert (d[a == 1, 4] == 1).all() and (d[a != 1] == 0).all() and (d[:, :4] == 0).all()


def test_loss_normalisation_with_zero_outputs():
    # All logits 0 -> every sampled anchor costs ln 2, so the mean over sampled anchors is ln 2.
    rpn = head()
    with torch.no_grad():
        for conv in (rpn.rpn_cls, rpn.rpn_reg):
            conv.weight.zero_()
            conv.bias.zero_()
    _, losses = rpn(features(), [(128, 128)] * 2, targets())
    torch.testing.assert_close(losses["loss_rpn_cls"], torch.tensor(math.log(2)))
    assert losses["loss_rpn_bbox"] > 0


def test_forward_backward_and_zero_gt_image():
    rpn = head()
    proposals, losses = rpn(features(), [(128, 128)] * 2, targets())
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_bbox"}
    total = losses["loss_rpn_cls"] + losses["loss_rpn_bbox"]
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in rpn.parameters())
    assert len(proposals) == 2 and not proposals[0].requires_grad


def test_only_negative_image_has_no_regression_loss():
    rpn = head()
    empty = [{"boxes": torch.zeros(0, 5), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    _, losses = rpn(features(), [(128, 128)] * 2, empty)
    assert losses["loss_rpn_bbox"] == 0 and losses["loss_rpn_cls"] > 0


def test_proposals_are_mmrotate_oc_rows_best_first():
    rpn = head(nms_pre=300, max_per_img=100)
    with torch.no_grad():
        rpn.rpn_reg.bias.normal_(0, 0.5)
    feats = features()
    logits, deltas = rpn.head(feats)
    anchors = rpn.anchor_generator.grid_anchors([f.shape[-2:] for f in feats], torch.device("cpu"))
    for boxes, scores in rpn.get_proposals(logits, deltas, anchors, [(128, 128)] * 2):
        assert 0 < boxes.shape[0] <= 100 and boxes.shape[1] == 5
        assert (boxes[:, 4] >= 0).all() and (boxes[:, 4] < math.pi / 2).all()
        assert (scores[:-1] >= scores[1:]).all()


def test_nms_pre_is_per_level():
    gen = AnchorGenerator()
    rpn = head(anchor_generator=gen, nms_pre=10, max_per_img=1000, nms_iou=1.0)  # IoU > 1: no suppression
    feats = features()
    logits, deltas = rpn.head(feats)
    anchors = gen.grid_anchors([f.shape[-2:] for f in feats], torch.device("cpu"))
    (boxes, _), _ = rpn.get_proposals(logits, deltas, anchors, [(128, 128)] * 2)
    # Every level (3072, 768, 192, 48 and 12 anchors) keeps its own best 10.
    assert boxes.shape[0] == 5 * 10


def test_test_time_keeps_its_own_number_of_proposals():
    """``test_max_per_img`` bounds the proposals in eval mode only (the RoIs a window's box head
    scores); training keeps ``max_per_img``, and without it eval does too."""
    gen = AnchorGenerator()
    feats = features()
    anchors = gen.grid_anchors([f.shape[-2:] for f in feats], torch.device("cpu"))

    def kept(rpn: OrientedRPNHead) -> int:
        logits, deltas = rpn.head(feats)
        (boxes, _), _ = rpn.get_proposals(logits, deltas, anchors, [(128, 128)] * 2)
        return boxes.shape[0]

    rpn = head(anchor_generator=gen, nms_pre=10, max_per_img=40, test_max_per_img=20, nms_iou=1.0)
    assert kept(rpn.train()) == 40 and kept(rpn.eval()) == 20
    assert kept(head(anchor_generator=gen, nms_pre=10, max_per_img=40, nms_iou=1.0).eval()) == 40


def test_the_light_configs_and_the_shipped_model_score_500_rois_a_window():
    from hbdnet.checkpoint import bundled_model_path, bundled_models, load_model
    from hbdnet.training.config import load_experiment

    for config in ("hbdnet_lite_cpu", "hbdnet_lite_nwpu"):
        model = load_experiment(CONFIGS / f"{config}.yaml").model
        assert (model.local.rpn_test_max_per_img, model.global_detector.rpn_test_max_per_img) == (500, 500)
    assert load_experiment(CONFIGS / "hbdnet_r50_obb.yaml").model.local.rpn_test_max_per_img is None  # mmrotate's
    if "default" in bundled_models():
        shipped, _ = load_model(bundled_model_path("default"))
        detectors = [shipped.local_detector, *shipped.global_detectors]
        assert [(d.rpn_head.max_per_img, d.rpn_head.test_max_per_img) for d in detectors] == [(1000, 500)] * len(detectors)


@pytest.mark.parametrize("border", [0, -1])
def test_allowed_border_excludes_anchors_whose_top_left_is_outside(border):
    rpn = head(allowed_border=border, num_samples=10**6, pos_fraction=0.5)
    feats = features()
    anchors = rpn.anchor_generator.grid_anchors([f.shape[-2:] for f in feats], torch.device("cpu"))
    size = (64, 96)
    # Confident 'object' logits on anchors whose x1, y1 fall outside the image, 0 elsewhere; no GT,
    # so every sampled anchor is a negative.
    logits = []
    for a in anchors:
        outside = (a[:, 0] < 0) | (a[:, 1] < 0) | (a[:, 0] >= size[1]) | (a[:, 1] >= size[0])
        logits.append(torch.where(outside, 10.0, 0.0)[None])
    deltas = [torch.zeros(1, a.shape[0], 6) for a in anchors]
    empty = [{"boxes": torch.zeros(0, 5), "labels": torch.zeros(0, dtype=torch.long)}]
    loss = rpn.loss(logits, deltas, anchors, [size], empty)["loss_rpn_cls"]
    if border == 0:
        torch.testing.assert_close(loss, torch.tensor(math.log(2)))
    else:
        assert loss > 1.0
