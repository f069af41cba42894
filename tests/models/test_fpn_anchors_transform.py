import math

import torch
import torch.nn.functional as F

from hbdnet.models.anchors import AnchorGenerator, anchor_inside_flags
from hbdnet.models.fpn import FPN
from hbdnet.models.transform import PIXEL_MEAN, PIXEL_STD, batch_images, normalize


class TestFPN:
    def test_shapes_names_and_p6(self):
        fpn = FPN([8, 16, 32, 64], out_channels=16, num_outs=5)
        feats = [torch.randn(1, c, 64 // 2**i, 48 // 2**i) for i, c in enumerate([8, 16, 32, 64])]
        outs = fpn(feats)
        assert [tuple(o.shape) for o in outs] == [
            (1, 16, 64, 48), (1, 16, 32, 24), (1, 16, 16, 12), (1, 16, 8, 6), (1, 16, 4, 3)
        ]
        torch.testing.assert_close(outs[4], outs[3][..., ::2, ::2])
        keys = set(fpn.state_dict())
        assert {"lateral_convs.0.conv.weight", "lateral_convs.3.conv.bias", "fpn_convs.2.conv.weight"} <= keys
        assert fpn.state_dict()["fpn_convs.0.conv.weight"].shape == (16, 16, 3, 3)

    def test_top_down_nearest_upsampling_by_size(self):
        fpn = FPN([1, 1], out_channels=1, num_outs=2)
        with torch.no_grad():
            for m in list(fpn.lateral_convs) + list(fpn.fpn_convs):
                m.conv.weight.zero_()
                m.conv.bias.zero_()
            for m in fpn.lateral_convs:
                m.conv.weight.fill_(1.0)
            fpn.fpn_convs[0].conv.weight[0, 0, 1, 1] = 1.0
        c2 = torch.zeros(1, 1, 5, 5)
        c3 = torch.arange(9.0).reshape(1, 1, 3, 3)
        out = fpn([c2, c3])[0]
        torch.testing.assert_close(out, F.interpolate(c3, size=(5, 5), mode="nearest"))


class TestAnchors:
    def test_base_anchors_ratio_is_h_over_w(self):
        base = AnchorGenerator().base_anchors(4)
        w, h = base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]
        torch.testing.assert_close(h / w, torch.tensor([0.5, 1.0, 2.0]))
        torch.testing.assert_close(w * h, torch.full((3,), 32.0**2))
        torch.testing.assert_close(base[1], torch.tensor([-16.0, -16.0, 16.0, 16.0]))
        torch.testing.assert_close(base[0, 2], torch.tensor(16 * math.sqrt(2)))

    def test_grid_order_h_w_a_and_zero_centre_offset(self):
        gen = AnchorGenerator(strides=[8], ratios=[0.5, 1.0, 2.0], scales=[8])
        (anchors,) = gen.grid_anchors([(3, 5)], torch.device("cpu"))
        assert anchors.shape == (3 * 5 * 3, 4)
        centres = (anchors[:, :2] + anchors[:, 2:]) / 2
        y, x, a = 2, 4, 1
        j = (y * 5 + x) * 3 + a
        torch.testing.assert_close(centres[j], torch.tensor([x * 8.0, y * 8.0]))
        torch.testing.assert_close(anchors[j] - anchors[a], torch.tensor([32.0, 16.0, 32.0, 16.0]))

    def test_inside_flags_read_the_top_left_corner(self):
        anchors = torch.tensor(
            [[-1.0, 5.0, 20.0, 30.0], [0.0, 0.0, 500.0, 500.0], [99.0, 10.0, 140.0, 20.0], [100.0, 10.0, 120.0, 20.0]]
        )
        assert anchor_inside_flags(anchors, (50, 100), 0).tolist() == [False, True, True, False]
        assert anchor_inside_flags(anchors, (50, 100), -1).all()


class TestTransform:
    def test_normalize_values(self):
        img = torch.tensor(PIXEL_MEAN).view(3, 1, 1).expand(3, 2, 2).round().to(torch.uint8)
        out = normalize(img)
        expected = (torch.tensor(PIXEL_MEAN).round() - torch.tensor(PIXEL_MEAN)) / torch.tensor(PIXEL_STD)
        torch.testing.assert_close(out[:, 0, 0], expected)
        assert out.dtype == torch.float32

    def test_pad_after_normalisation_with_zeros(self):
        a = torch.full((3, 40, 50), 255, dtype=torch.uint8)
        b = torch.zeros((3, 64, 33), dtype=torch.uint8)
        batch, sizes = batch_images([a, b])
        assert batch.shape == (2, 3, 64, 64) and sizes == [(40, 50), (64, 33)]
        assert (batch[0, :, 40:, :] == 0).all() and (batch[0, :, :, 50:] == 0).all()
        torch.testing.assert_close(batch[0, 0, 0, 0], torch.tensor((255 - PIXEL_MEAN[0]) / PIXEL_STD[0]))
        assert batch[1, 0, 0, 0] < -1.5  # black normalised, not padding

    def test_batch_tensor_input(self):
        batch, sizes = batch_images(torch.zeros(2, 3, 96, 100, dtype=torch.uint8))
        assert batch.shape == (2, 3, 96, 128) and sizes == [(96, 100)] * 2


def test_anchors_are_cached_per_feature_map_sizes():
    gen = AnchorGenerator()
    sizes = [(32, 24), (16, 12), (8, 6), (4, 3), (2, 2)]
    first = gen.grid_anchors(sizes, torch.device("cpu"))
    again = gen.grid_anchors([torch.Size(s) for s in sizes], torch.device("cpu"))
    assert all(a is b for a, b in zip(first, again, strict=True))
    fresh = AnchorGenerator()._grid_anchors(sizes, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(first, fresh, strict=True))
    other = gen.grid_anchors([(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)], torch.device("cpu"))
    assert other[0].shape == (16 * 16 * 3, 4)
    for k in range(40):  # the cache stays bounded
        gen.grid_anchors([(k + 1, 1)] * 5, torch.device("cpu"))
    assert len(gen._cache) <= 16
