import math

import pytest
import torch

from hbdnet.boxes.convention import le90_to_oc
from hbdnet.models.roi_heads import OrientedRoIHead, RotatedRoIExtractor, RotatedShared2FCBBoxHead

C = 8


def features(size: int = 128, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, C, size // s, size // s, generator=g, requires_grad=True) for s in (4, 8, 16, 32, 64)]


def gt_targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[50.0, 60.0, 70.0, 14.0, 0.3], [90.0, 30.0, 40.0, 20.0, -1.2]]),
         "labels": torch.tensor([0, 0])},
        {"boxes": torch.zeros(0, 5), "labels": torch.zeros(0, dtype=torch.long)},
    ]


def proposals(seed: int = 1) -> list[torch.Tensor]:
    """Jittered copies of the GTs (in oc rows, as the RPN gives them) plus random boxes."""
    g = torch.Generator().manual_seed(seed)
    gts = le90_to_oc(gt_targets()[0]["boxes"])
    near = gts.repeat(20, 1) + torch.randn(40, 5, generator=g) * torch.tensor([4.0, 4.0, 6.0, 3.0, 0.08])
    rand = torch.cat([torch.rand(60, 2, generator=g) * 128, 10 + torch.rand(60, 2, generator=g) * 50,
                      torch.rand(60, 1, generator=g) * math.pi / 2], dim=1)
    first = torch.cat([near, rand])
    first[:, 2:4] = first[:, 2:4].abs() + 2
    return [first, rand.clone()]


def make_head(task: str = "obb", **kw) -> OrientedRoIHead:
    extractor = RotatedRoIExtractor(finest_scale=16)
    bbox_head = RotatedShared2FCBBoxHead(in_channels=C, fc_channels=32, reg_dim=5 if task == "obb" else 4)
    return OrientedRoIHead(extractor, bbox_head, task=task, num_samples=64, **kw)


def test_checkpoint_layout_of_the_box_head():
    sd = RotatedShared2FCBBoxHead().state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes == {
        "shared_fcs.0.weight": (1024, 12544), "shared_fcs.0.bias": (1024,),
        "shared_fcs.1.weight": (1024, 1024), "shared_fcs.1.bias": (1024,),
        "fc_cls.weight": (2, 1024), "fc_cls.bias": (2,),
        "fc_reg.weight": (5, 1024), "fc_reg.bias": (5,),
    }


@pytest.mark.parametrize(
    ("finest", "side", "level"),
    [(16, 31.9, 0), (16, 32.0, 1), (16, 64.0, 2), (16, 127.9, 2), (16, 128.0, 3), (16, 2000.0, 3),
     (56, 111.0, 0), (56, 112.0, 1), (56, 448.0, 3), (56, 1.0, 0)],
)
def test_level_mapping(finest, side, level):
    ex = RotatedRoIExtractor(finest_scale=finest)
    rois = torch.tensor([[0.0, 50.0, 50.0, side * 2, side / 2, 0.3]])  # sqrt(w h) = side
    assert ex.map_levels(rois).item() == level


def test_extractor_uses_the_mapped_level_and_stride():
    ex = RotatedRoIExtractor(finest_scale=16)
    feats = [torch.full((1, 1, 64 // 2**i, 64 // 2**i), float(i)) for i in range(4)]
    rois = torch.tensor([[0.0, 32.0, 32.0, 8.0, 8.0, 0.0], [0.0, 32.0, 32.0, 40.0, 40.0, 0.5]])
    out = ex(feats, rois)
    assert out.shape == (2, 1, 7, 7)
    torch.testing.assert_close(out[0], torch.zeros(1, 7, 7))
    torch.testing.assert_close(out[1], torch.ones(1, 7, 7))


@pytest.mark.parametrize("task", ["obb", "hbb"])
@pytest.mark.parametrize("use_ssrw", [False, True])
def test_forward_backward(task, use_ssrw):
    torch.manual_seed(0)
    head = make_head(task, use_ssrw=use_ssrw)
    feats = features()
    dets, losses = head(feats, proposals(), [(128, 128)] * 2, gt_targets())
    assert dets == [] and set(losses) == {"loss_cls", "loss_bbox"}
    assert losses["loss_bbox"] > 0 and torch.isfinite(losses["loss_cls"])
    (losses["loss_cls"] + losses["loss_bbox"]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    # RoIs here map to P2/P3; P6 is never pooled from.
    assert feats[0].grad is not None and feats[1].grad is not None and feats[4].grad is None


def test_cross_entropy_is_averaged_over_sampled_rois():
    head = make_head()
    with torch.no_grad():
        head.bbox_head.fc_cls.weight.zero_()
        head.bbox_head.fc_cls.bias.zero_()
    _, losses = head(features(), proposals(), [(128, 128)] * 2, gt_targets())
    torch.testing.assert_close(losses["loss_cls"], torch.tensor(math.log(2)))


def test_ssrw_reweights_the_box_loss():
    torch.manual_seed(3)
    plain = make_head()
    torch.manual_seed(3)
    ssrw = make_head(use_ssrw=True)
    ssrw.load_state_dict(plain.state_dict())
    feats = features()
    torch.manual_seed(5)
    a = plain(feats, proposals(), [(128, 128)] * 2, gt_targets())[1]
    torch.manual_seed(5)
    b = ssrw(feats, proposals(), [(128, 128)] * 2, gt_targets())[1]
    torch.testing.assert_close(a["loss_cls"], b["loss_cls"])
    # GT aspect ratios 5 and 2: weights well above 0.3 and below 3, never equal to the plain loss.
    ratio = (b["loss_bbox"] / a["loss_bbox"]).item()
    assert 0.5 < ratio < 3.0 and abs(ratio - 1) > 1e-3


def test_box_loss_normalised_by_all_sampled_rois():
    # With fc_reg zeroed the box loss is sum over positives of SmoothL1(targets) / number of samples;
    # doubling the negatives available (second image) must not change the positives' sum but the divisor.
    torch.manual_seed(0)
    head = make_head()
    with torch.no_grad():
        head.bbox_head.fc_reg.weight.zero_()
        head.bbox_head.fc_reg.bias.zero_()
    feats = features()
    targets = gt_targets()
    torch.manual_seed(1)
    one = head([f[:1] for f in feats], proposals()[:1], [(128, 128)], targets[:1])[1]["loss_bbox"]
    torch.manual_seed(1)
    two = head(feats, proposals(), [(128, 128)] * 2, targets)[1]["loss_bbox"]
    # Image 2 has no GT and 60 proposals: 60 more sampled negatives, no more positives.
    torch.testing.assert_close(two, one * 64 / (64 + 60))


def test_zero_gt_batch_trains():
    head = make_head()
    empty = [{"boxes": torch.zeros(0, 5), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    _, losses = head(features(), proposals(), [(128, 128)] * 2, empty)
    assert losses["loss_bbox"] == 0 and losses["loss_cls"] > 0
    (losses["loss_cls"] + losses["loss_bbox"]).backward()


@pytest.mark.parametrize("task", ["obb", "hbb"])
def test_predict_outputs_le90_in_the_image(task):
    head = make_head(task, score_thr=0.0, max_per_img=30).eval()
    with torch.no_grad():
        head.bbox_head.fc_reg.bias.normal_(0, 2.0)  # push centres outside so that clamping matters
    dets, losses = head(features(), proposals(), [(128, 100), (128, 128)], None)
    assert losses == {} and len(dets) == 2
    for d, (h, w) in zip(dets, [(128, 100), (128, 128)]):
        boxes, scores, labels = d["boxes"], d["scores"], d["labels"]
        assert boxes.shape[1] == 5 and 0 < boxes.shape[0] <= 30
        assert scores.shape == labels.shape == (boxes.shape[0],) and labels.dtype == torch.int64
        assert (boxes[:, 2] >= boxes[:, 3]).all()
        assert (boxes[:, 4] >= -math.pi / 2).all() and (boxes[:, 4] < math.pi / 2).all()
        assert (scores[:-1] >= scores[1:]).all()
        if task == "obb":
            assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] <= w - 1).all() and (boxes[:, 1] <= h - 1).all()
        else:
            assert (boxes[:, 4] == 0).logical_or(boxes[:, 4] == -math.pi / 2).all()


def test_predict_score_threshold_and_no_proposals():
    head = make_head(score_thr=0.99).eval()
    dets, _ = head(features(), [torch.zeros(0, 5), proposals()[1]], [(128, 128)] * 2)
    assert dets[0]["boxes"].shape == (0, 5)
    assert (dets[1]["scores"] > 0.99).all()


def test_task_and_head_must_agree():
    with pytest.raises(ValueError, match="fc_reg"):
        OrientedRoIHead(RotatedRoIExtractor(), RotatedShared2FCBBoxHead(reg_dim=5), task="hbb")
