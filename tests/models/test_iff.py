import torch

from hbdnet.models.iff import InterLayerFusion, crop_footprint


def test_crop_of_aligned_footprint_equals_slicing():
    torch.manual_seed(0)
    g = torch.randn(2, 3, 64, 64)
    rel = torch.tensor([[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.5, 0.5]])
    out = crop_footprint(g, rel, (32, 32))
    assert torch.allclose(out[0], g[0, :, 32:64, 16:48], atol=1e-6)
    assert torch.allclose(out[1], g[1, :, 0:32, 0:32], atol=1e-6)


def test_fusion_matches_levels_and_accumulates_all_maps():
    """Two context crops: P2, P3 pass through; P4 fuses one map; P5 and P6 fuse two (the authors' typo case)."""
    torch.manual_seed(0)
    c, b = 8, 2
    sizes = [64, 32, 16, 8, 4]  # P2..P6 of a 256 px window
    window = [torch.randn(b, c, s, s) for s in sizes]
    context = [[torch.randn(b, c, s, s) for s in sizes] for _ in range(2)]
    # window footprint: half of crop 0, a quarter of crop 1, both centred
    rel = torch.tensor([[[0.25, 0.25, 0.75, 0.75], [0.375, 0.375, 0.625, 0.625]]] * b)
    iff = InterLayerFusion(channels=c)
    out = iff(window, context, rel)
    assert [o.shape for o in out] == [w.shape for w in window]
    assert torch.equal(out[0], window[0]) and torch.equal(out[1], window[1])
    # P4 (level 2) = conv_1(cat[window P4, crop0 level 1 centre]) -> check against an explicit computation
    crop0_p3 = context[0][1][:, :, 8:24, 8:24]
    expected = torch.relu(iff.fusion_convs[0].conv(torch.cat([window[2], crop0_p3], 1)))
    assert torch.allclose(out[2], expected, atol=1e-5)
    # P5 (level 3) uses both crops: crop0 level 2 and crop1 level 1
    crop0_p4 = context[0][2][:, :, 4:12, 4:12]
    crop1_p3 = context[1][1][:, :, 12:20, 12:20]
    expected = torch.relu(iff.fusion_convs[1].conv(torch.cat([window[3], crop0_p4, crop1_p3], 1)))
    assert torch.allclose(out[3], expected, atol=1e-5)
    assert iff.fusion_convs[1].conv.in_channels == 3 * c


def test_fusion_backward_reaches_context_and_convs():
    c = 4
    window = [torch.randn(1, c, s, s, requires_grad=True) for s in (32, 16, 8, 4, 2)]
    context = [[torch.randn(1, c, s, s, requires_grad=True) for s in (32, 16, 8, 4, 2)]]
    rel = torch.tensor([[[0.0, 0.0, 0.5, 0.5]]])
    iff = InterLayerFusion(channels=c)
    sum(o.sum() for o in iff(window, context, rel)).backward()
    assert context[0][1].grad is not None and context[0][1].grad.abs().sum() > 0
    assert iff.fusion_convs[0].conv.weight.grad is not None


def test_checkpoint_key_layout():
    keys = {k: tuple(v.shape) for k, v in InterLayerFusion(256).state_dict().items()}
    assert keys["fusion_convs.0.conv.weight"] == (256, 512, 3, 3)
    assert keys["fusion_convs.4.conv.weight"] == (256, 1536, 3, 3)
    assert len(keys) == 10
