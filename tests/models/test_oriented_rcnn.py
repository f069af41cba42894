import math

import pytest
import torch

from hbdnet.models import ModelConfig, OrientedRCNN, build_oriented_rcnn

LOSS_KEYS = {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"}


def total(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(losses.values())


def test_r50_state_dict_matches_the_checkpoint_layout():
    model = build_oriented_rcnn(ModelConfig())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {
        "backbone.conv1.weight": (64, 3, 7, 7),
        "backbone.bn1.running_var": (64,),
        "backbone.layer1.0.downsample.1.weight": (256,),
        "backbone.layer3.5.conv2.weight": (256, 256, 3, 3),
        "backbone.layer4.2.conv3.weight": (2048, 512, 1, 1),
        "neck.lateral_convs.0.conv.weight": (256, 256, 1, 1),
        "neck.lateral_convs.3.conv.weight": (256, 2048, 1, 1),
        "neck.fpn_convs.3.conv.weight": (256, 256, 3, 3),
        "neck.fpn_convs.0.conv.bias": (256,),
        "rpn_head.rpn_conv.weight": (256, 256, 3, 3),
        "rpn_head.rpn_cls.weight": (3, 256, 1, 1),
        "rpn_head.rpn_reg.weight": (18, 256, 1, 1),
        "rpn_head.rpn_reg.bias": (18,),
        "roi_head.bbox_head.shared_fcs.0.weight": (1024, 12544),
        "roi_head.bbox_head.shared_fcs.1.weight": (1024, 1024),
        "roi_head.bbox_head.fc_cls.weight": (2, 1024),
        "roi_head.bbox_head.fc_reg.weight": (5, 1024),
    }
    for key, shape in expected.items():
        assert shapes[key] == shape, key
    # 318 backbone + 16 FPN + 6 RPN + 8 box-head tensors, nothing else (no buffers of our own).
    prefixes = {"backbone.": 318, "neck.": 16, "rpn_head.": 6, "roi_head.bbox_head.": 8}
    for prefix, n in prefixes.items():
        assert sum(k.startswith(prefix) for k in shapes) == n, prefix
    assert len(shapes) == sum(prefixes.values())
    n_params = sum(p.numel() for p in model.parameters())
    assert 41_000_000 < n_params < 42_000_000


def test_hbb_head_has_four_regression_outputs():
    model = build_oriented_rcnn(ModelConfig(task="hbb"))
    assert model.state_dict()["roi_head.bbox_head.fc_reg.weight"].shape == (4, 1024)


def test_training_step_gradients_and_frozen_stages(make_tiny_config, small_scene):
    torch.manual_seed(0)
    model = build_oriented_rcnn(make_tiny_config()).train()
    images, targets = small_scene
    losses = model(images, targets)
    assert set(losses) == LOSS_KEYS and all(torch.isfinite(v) for v in losses.values())
    total(losses).backward()
    for name, p in model.named_parameters():
        frozen = name.startswith(("backbone.conv1.", "backbone.bn1.", "backbone.layer1."))
        assert p.requires_grad == (not frozen), name
        if frozen:
            assert p.grad is None, name
        else:
            assert p.grad is not None, name
    # The signal reaches the first trainable stage of the backbone (through the shortcut and the
    # zero-initialised last BN of the block; the block's convs get gradients once that BN moves).
    assert model.backbone.layer2[0].downsample[0].weight.grad.abs().sum() > 0
    assert model.backbone.layer2[0].bn3.weight.grad.abs().sum() > 0
    assert model.neck.lateral_convs[0].conv.weight.grad.abs().sum() > 0


def test_split_steps_equal_forward(make_tiny_config, small_scene):
    model = build_oriented_rcnn(make_tiny_config()).eval()
    images, _ = small_scene
    with torch.no_grad():
        full = model(images)
        batch, sizes = model.preprocess(images)
        feats = model.extract_features(batch)
        assert len(feats) == 5 and [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]
        split = model.forward_heads(feats, sizes)
    for a, b in zip(full, split):
        torch.testing.assert_close(a["boxes"], b["boxes"])


def test_eval_outputs(make_tiny_config, scene):
    model = build_oriented_rcnn(make_tiny_config(score_thr=0.0, max_per_img=50)).eval()
    images, _ = scene
    with torch.no_grad():
        dets = model([images[0], images[1][:, :160, :]])
    assert len(dets) == 2
    for d, (h, w) in zip(dets, [(192, 192), (160, 192)]):
        assert set(d) == {"boxes", "scores", "labels"}
        boxes = d["boxes"]
        assert boxes.ndim == 2 and boxes.shape[1] == 5 and 0 < boxes.shape[0] <= 50
        assert (boxes[:, 2] >= boxes[:, 3]).all()
        assert (boxes[:, 4] >= -math.pi / 2).all() and (boxes[:, 4] < math.pi / 2).all()
        assert (boxes[:, 0] <= w - 1).all() and (boxes[:, 1] <= h - 1).all() and (boxes[:, :2] >= 0).all()
        assert d["labels"].dtype == torch.int64 and (d["labels"] == 0).all()


@pytest.mark.parametrize("task,use_ssrw", [("obb", False), ("obb", True), ("hbb", False)])
def test_zero_gt_image_trains(make_tiny_config, small_scene, task, use_ssrw):
    torch.manual_seed(0)
    model = build_oriented_rcnn(make_tiny_config(task=task, use_ssrw=use_ssrw)).train()
    images, targets = small_scene
    targets = [targets[0], {"boxes": torch.zeros(0, 5), "labels": torch.zeros(0, dtype=torch.long)}]
    losses = model(images, targets)
    total(losses).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    all_empty = [{"boxes": torch.zeros(0, 5), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    losses = model(images, all_empty)
    assert losses["loss_bbox"] == 0 and losses["loss_rpn_bbox"] == 0
    total(losses).backward()


def sgd_losses(model, images, targets, steps: int) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.02, momentum=0.9)
    history = []
    for _ in range(steps):
        loss = total(model(images, targets))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 35)
        opt.step()
        history.append(loss.item())
    return history


def test_sgd_on_a_fixed_batch_lowers_the_loss(make_tiny_config, small_scene):
    torch.manual_seed(0)
    model = build_oriented_rcnn(make_tiny_config(rcnn_num_samples=64)).train()
    history = sgd_losses(model, *small_scene, steps=10)
    assert sum(history[-2:]) / 2 < 0.85 * sum(history[:2]) / 2, history


@pytest.mark.slow
@pytest.mark.parametrize("task,use_ssrw", [("obb", False), ("obb", True), ("hbb", False)])
def test_sgd_longer_run_keeps_lowering_the_loss(make_tiny_config, small_scene, task, use_ssrw):
    torch.manual_seed(0)
    model = build_oriented_rcnn(make_tiny_config(task=task, use_ssrw=use_ssrw, rcnn_num_samples=64)).train()
    history = sgd_losses(model, *small_scene, steps=30)
    assert sum(history[-3:]) / 3 < 0.6 * sum(history[:3]) / 3, history


def test_model_is_an_oriented_rcnn(make_tiny_config):
    assert isinstance(build_oriented_rcnn(make_tiny_config()), OrientedRCNN)
