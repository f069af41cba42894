"""Context crops (IFF) are padded alike in training and inference.

Training pads a crop that is smaller than its nominal size in the data set
(``hbdnet.data.windows``: ``pad_value``); inference hands the model the crop as read and
``HBDNet.forward`` pads the normalised crop with zeros. The padding value is the normalisation mean,
which is exactly 0 once normalised, so the model sees the same tensor either way.
"""

import numpy as np
import rasterio
import torch
import torch.nn.functional as F

from hbdnet.data.dota import DotaImage
from hbdnet.data.windows import WindowConfig, WindowDataset
from hbdnet.models.hbdnet import HBDNet, HBDNetConfig, WindowContext
from hbdnet.models.transform import normalize

from tests.models.conftest import tiny_config


def _scene(tmp_path, h=300, w=200):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(3, h, w), dtype=np.uint8)
    path = tmp_path / "scene.png"
    with rasterio.open(path, "w", driver="PNG", width=w, height=h, count=3, dtype="uint8") as ds:
        ds.write(img)
    box = torch.tensor([[60.0, 60.0, 50.0, 10.0, 0.2]])
    return DotaImage(path, box, torch.zeros(1, dtype=torch.bool), np.zeros((1, 8)))


def test_training_padding_is_zero_once_normalised(tmp_path):
    item = _scene(tmp_path)
    ds = WindowDataset([item], [0], WindowConfig(window=128, overlap=32, max_side=128, with_global_crops=2,
                                                 filter_empty=False))
    crops = ds[0].global_crops
    level2 = crops.images[1]  # level 2 of a 300 x 200 scene is 75 x 50: mostly padding
    normed = normalize(level2)
    assert torch.equal(normed[:, 75:, :], torch.zeros_like(normed[:, 75:, :]))
    assert torch.equal(normed[:, :, 50:], torch.zeros_like(normed[:, :, 50:]))
    # the normalised training crop is the normalised pixels padded with zeros, as inference does it
    pixels = level2[:, :75, :50]
    torch.testing.assert_close(normed, F.pad(normalize(pixels), (0, 128 - 50, 0, 128 - 75)), rtol=0, atol=0)


def test_model_sees_the_same_context_in_training_and_inference(tmp_path):
    item = _scene(tmp_path)
    ds = WindowDataset([item], [0], WindowConfig(window=128, overlap=32, max_side=128, with_global_crops=2,
                                                 filter_empty=False))
    sample = ds[0]
    crops = sample.global_crops
    sizes = [(75 * 2, 50 * 2), (75, 50)]  # level 1 and 2 of the 300 x 200 scene, cut to fit 128
    sizes = [(min(h, 128), min(w, 128)) for h, w in sizes]
    torch.manual_seed(0)
    model = HBDNet(HBDNetConfig(local=tiny_config(), global_detector=tiny_config(finest_scale=56.0),
                                use_iff=True, window=128, overlap=32)).eval()
    rel = crops.rel_boxes[None]
    padded = WindowContext([[crops.images[r]] for r in range(2)], rel)  # training: padded by the data set
    as_read = WindowContext([[crops.images[r][:, :h, :w].to(torch.uint8)] for r, (h, w) in enumerate(sizes)], rel)
    seen = []
    fuse = model.fusion.forward

    def spy(features, context_feats, rel_boxes):
        seen.append(context_feats)
        return fuse(features, context_feats, rel_boxes)

    model.fusion.forward = spy
    a = model.detect([sample.image], 0, context=padded)[0]
    b = model.detect([sample.image], 0, context=as_read)[0]
    # the coarse detectors' feature maps of the whole crops (padding included) are the same ...
    for fa, fb in zip(seen[0], seen[1]):
        for la, lb in zip(fa, fb):
            torch.testing.assert_close(la, lb, rtol=0, atol=0)
    # ... and so are the detections
    assert len(a["boxes"]) > 0
    torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=0)
    torch.testing.assert_close(a["scores"], b["scores"], rtol=0, atol=0)
