"""The inference-only form (BatchNorm folded, channels_last) computes what the trained model computes."""

import copy

import pytest
import torch
from torch import nn

from hbdnet.models.deploy import fold_batchnorm, prepare_for_inference
from hbdnet.models.hbdnet import HBDNet, HBDNetConfig, WindowContext

from .conftest import _synthetic_batch, tiny_config


def perturbed_model(backbone: str, use_iff: bool = False) -> HBDNet:
    """A tiny HBD-Net whose BatchNorm statistics and affine parameters are far from the identity."""
    torch.manual_seed(0)
    cfg = tiny_config(backbone=backbone)
    model = HBDNet(HBDNetConfig(local=cfg, global_detector=tiny_config(backbone=backbone, finest_scale=56.0),
                                use_iff=use_iff, window=192))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(0.3 + 2 * torch.rand(t.shape, generator=g))
            elif name.endswith("running_mean"):
                t.copy_(0.5 * torch.randn(t.shape, generator=g))
            elif t.is_floating_point():
                t.add_(0.2 * torch.randn(t.shape, generator=g) * (t.std() if t.numel() > 1 else 1.0))
    return model.eval()


def assert_same_detections(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert len(a["scores"]) == len(b["scores"]) > 0
    torch.testing.assert_close(b["scores"], a["scores"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b["boxes"][:, :4], a["boxes"][:, :4], rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("backbone", ["resnet_tiny", "efficientnet_lite0"])
def test_folded_channels_last_model_matches_the_trained_one(backbone):
    model = perturbed_model(backbone)
    fast = prepare_for_inference(copy.deepcopy(model))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    images, _ = _synthetic_batch()
    images = images.to(torch.uint8)
    with torch.inference_mode():
        det, fast_det = model.local_detector, fast.local_detector
        feats = det.extract_features(det.preprocess([images[0]])[0])
        fast_feats = fast_det.extract_features(fast_det.preprocess([images[0]])[0])
        for f, g in zip(feats, fast_feats, strict=True):
            assert g.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(g, f, rtol=1e-4, atol=1e-4 * float(f.abs().max()))
        for level in (0, 1):
            for a, b in zip(model.detect(list(images), level), fast.detect(list(images), level), strict=True):
                assert_same_detections(a, b)


def test_folding_each_conv_bn_pair_alone_is_exact_to_rounding():
    """Folding without channels_last: every BN of both backbones goes, once, and outputs stay."""
    model = perturbed_model("resnet_tiny")
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded) == n_bn > 0
    assert fold_batchnorm(folded) == 0
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        for ref, out in zip(model.local_detector.backbone(x), folded.local_detector.backbone(x), strict=True):
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_inter_layer_fusion_runs_on_the_prepared_model():
    model = perturbed_model("resnet_tiny", use_iff=True)
    fast = prepare_for_inference(copy.deepcopy(model))
    images, _ = _synthetic_batch()
    images = images.to(torch.uint8)
    rel = torch.tensor([[[0.25, 0.25, 0.75, 0.75], [0.375, 0.375, 0.625, 0.625]]])
    context = WindowContext([[images[1]], [images[0]]], rel)
    with torch.inference_mode():
        assert_same_detections(model.detect([images[0]], 0, context)[0], fast.detect([images[0]], 0, context)[0])


def test_the_engine_loads_the_inference_form_on_the_cpu(tmp_path):
    from hbdnet.checkpoint import save_checkpoint
    from hbdnet.inference import load_window_detector

    model = perturbed_model("resnet_tiny")
    detector = load_window_detector(save_checkpoint(tmp_path / "m.pth", model), "cpu")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in detector.model.modules())
    assert detector.model.local_detector.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    images, _ = _synthetic_batch()
    rgb = images[0].to(torch.uint8)
    with torch.inference_mode():
        assert_same_detections(model.detect([rgb], 0)[0], detector.model.detect([rgb], 0)[0])
