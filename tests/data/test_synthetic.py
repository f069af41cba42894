"""Synthetic coarse-level windows: every pasted and background bridge is labelled where its pixels are."""

import numpy as np
import rasterio
import shapely
import torch
from rasterio.features import rasterize

from hbdnet.boxes.convention import obb_to_poly
from hbdnet.data.dota import load_dota_folder
from hbdnet.data.synthetic import SyntheticConfig, SyntheticScenes


def write_image(root, name, size, boxes, seed):
    h, w = size
    rng = np.random.default_rng(seed)
    img = rng.normal(60, 10, size=(3, h, w)).clip(0, 255).astype(np.uint8)
    polys = obb_to_poly(torch.tensor(boxes, dtype=torch.float64)).numpy().reshape(-1, 4, 2)
    mask = rasterize([shapely.Polygon(p) for p in polys], out_shape=(h, w), fill=0, default_value=1).astype(bool)
    img[:, mask] = 245
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labelTxt").mkdir(parents=True, exist_ok=True)
    with rasterio.open(root / "images" / f"{name}.png", "w", driver="PNG", width=w, height=h, count=3,
                       dtype="uint8") as ds:
        ds.write(img)
    lines = [" ".join(f"{v:.2f}" for v in p.reshape(-1)) + " bridge 0" for p in polys]
    (root / "labelTxt" / f"{name}.txt").write_text("\n".join(lines) + "\n")


def mask_of(boxes, size, grow=0.0):
    polys = [shapely.Polygon(p).buffer(grow, join_style="mitre") for p in obb_to_poly(boxes.double()).numpy().reshape(-1, 4, 2)]
    if not polys:
        return np.zeros(size, bool)
    return rasterize(polys, out_shape=size, fill=0, default_value=1).astype(bool)


def test_synthetic_windows_label_every_bridge_exactly(tmp_path):
    write_image(tmp_path, "a", (300, 400), [(150, 120, 160, 14, 0.4), (320, 240, 70, 10, -1.0)], 0)
    write_image(tmp_path, "b", (280, 360), [(180, 140, 220, 16, -0.2)], 1)
    images = load_dota_folder(tmp_path)
    scenes = SyntheticScenes(images, 12, SyntheticConfig(size=512, level=2, length_range=(100, 400), feather=4))
    lengths = []
    pasted = 0
    for i in range(len(scenes)):
        s = scenes.sample(i, torch.Generator().manual_seed(i))
        assert s.image.shape == (3, 512, 512) and s.meta["level"] == 2 and s.meta["scale"] == 4
        boxes = s.target["boxes"]
        assert len(boxes) == len(s.target["labels"]) == len(s.target["truncated"])
        pasted += s.meta["pasted"]
        bright = s.image[0].numpy() > 150
        inside = mask_of(boxes, (512, 512), grow=-1.5)
        # the pixels inside each label are bridge pixels ...
        assert bright[inside].mean() > 0.95, i
        # ... and bridge pixels are inside labels (not counting bridges cut at a tile edge and dropped)
        outside = ~mask_of(boxes, (512, 512), grow=2.0)
        assert bright[outside].sum() <= 0.05 * bright.sum(), i
        lengths += boxes[:, 2].tolist()
    assert pasted >= 12  # at least one paste per window
    assert max(lengths) > 250 and min(lengths) < 100  # several scales


def test_synthetic_draws_depend_only_on_the_generator(tmp_path):
    write_image(tmp_path, "a", (300, 400), [(150, 120, 160, 14, 0.4)], 0)
    scenes = SyntheticScenes(load_dota_folder(tmp_path), 2, SyntheticConfig(size=256))
    a = scenes.sample(0, torch.Generator().manual_seed(5))
    scenes.sample(1, torch.Generator().manual_seed(9))
    b = scenes.sample(0, torch.Generator().manual_seed(5))
    assert torch.equal(a.image, b.image) and torch.equal(a.target["boxes"], b.target["boxes"])
