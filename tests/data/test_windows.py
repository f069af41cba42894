import math

import numpy as np
import pytest
import rasterio
import shapely
import torch

import hbdnet.data.windows as windows_module
from hbdnet.boxes.convention import obb_to_poly
from hbdnet.data.dota import DotaImage, load_dota_folder
from hbdnet.data.raster import read_pyramid_window
from hbdnet.data.windows import (
    WindowConfig,
    WindowDataset,
    collate_windows,
    window_targets,
)
from hbdnet.models.transform import PIXEL_MEAN
from hbdnet.pyramid import context_crops, PlanWindow, plan_pyramid


def boxes(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 5)


# --- ground truth of one window -------------------------------------------------------------


def test_inside_box_is_shifted_and_whole():
    tg = window_targets(boxes([150, 130, 40, 10, 0.3]), (100, 100, 200, 200), iof_thr=0.3)
    torch.testing.assert_close(tg.boxes, torch.tensor([[50.0, 30.0, 40.0, 10.0, 0.3]]))
    assert tg.truncated.tolist() == [False] and tg.source.tolist() == [0]


def test_box_on_the_edge_is_not_truncated():
    # A vertical box (theta = -pi/2) drawn exactly to the window's right edge.
    tg = window_targets(boxes([190, 150, 40, 20, -math.pi / 2]), (100, 100, 200, 200), iof_thr=0.3)
    assert tg.truncated.tolist() == [False]


def test_axis_aligned_cut_is_clipped_exactly():
    # x in [80, 120], y in [145, 155]; the window starts at x = 100: half is visible.
    b = boxes([100, 150, 40, 10, 0])
    tg = window_targets(b, (100, 100, 200, 200), iof_thr=0.5)
    assert tg.truncated.tolist() == [True]
    torch.testing.assert_close(tg.boxes, torch.tensor([[10.0, 50.0, 20.0, 10.0, 0.0]]))
    assert len(window_targets(b, (100, 100, 200, 200), iof_thr=0.51).boxes) == 0


def test_oblique_cut_is_the_min_area_rect_of_the_visible_part():
    b = boxes([190, 150, 80, 12, 0.5])
    rect = (100.0, 100.0, 200.0, 200.0)
    tg = window_targets(b, rect, iof_thr=0.3)
    assert tg.truncated.tolist() == [True]
    visible = shapely.intersection(shapely.Polygon(obb_to_poly(b)[0].reshape(4, 2).numpy()), shapely.box(*rect))
    fitted = shapely.Polygon((obb_to_poly(tg.boxes.double())[0].reshape(4, 2) + 100).numpy())
    # The fitted rectangle covers the visible part and is its minimum-area rectangle.
    assert fitted.buffer(1e-3).contains(visible)  # float32 rows
    assert fitted.area == pytest.approx(shapely.minimum_rotated_rectangle(visible).area, rel=1e-5)
    assert float(tg.boxes[0, 2]) < 80  # shorter than the whole bridge


def test_length_and_size_filters():
    b = boxes([150, 150, 14, 5, 0], [150, 170, 30, 1.5, 0], [120, 120, 16, 4, 0])
    tg = window_targets(b, (100, 100, 200, 200), iof_thr=0.3, min_length=15)
    assert tg.source.tolist() == [2]  # too short, too thin, kept
    assert window_targets(b, (100, 100, 200, 200), iof_thr=0.3).source.tolist() == [0, 2]


def test_no_boxes_and_far_boxes():
    assert len(window_targets(torch.zeros((0, 5)), (0, 0, 10, 10), 0.3).boxes) == 0
    assert len(window_targets(boxes([500, 500, 40, 10, 0]), (0, 0, 100, 100), 0.3).boxes) == 0


# --- global crop geometry -------------------------------------------------------------------


def test_global_crops_use_the_pyramid_context_crops():
    # the crop geometry itself is tested with hbdnet.pyramid.context_crops (tests/test_pyramid.py)
    win = PlanWindow(0, 1, 4120, 2472, 1024, 1024)
    crop = context_crops(win, 16384, 16384, 2)
    # x0/d - (c - c/d)/2, section 4.1
    assert (crop[0].window.col_off, crop[0].window.row_off) == (4120 // 2 - 256, 2472 // 2 - 256)
    assert (crop[1].window.col_off, crop[1].window.row_off) == (round(4120 / 4 - 384), round(2472 / 4 - 384))
    small = context_crops(PlanWindow(1, 2, 0, 0, 1024, 1024), 3000, 2500, 1)[0].window
    assert (small.level, small.scale, small.width, small.height, small.col_off) == (2, 4, 625, 750, 0)


# --- the dataset on a synthetic scene -------------------------------------------------------

SCENE_H, SCENE_W = 300, 460


@pytest.fixture
def synthetic(tmp_path, write_raster) -> DotaImage:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, SCENE_H, SCENE_W), dtype=np.uint8)
    path = write_raster(tmp_path / "scene.tif", img)
    b = torch.tensor(
        [
            [60.0, 50.0, 80.0, 12.0, 0.2],  # top left
            [400.0, 250.0, 120.0, 16.0, -0.7],  # bottom right
            [230.0, 40.0, 60.0, 10.0, 0.0],  # top middle: seen by two overlapping windows
        ]
    )
    return DotaImage(path, b, torch.zeros(3, dtype=torch.bool), obb_to_poly(b).numpy())


CFG = WindowConfig(window=128, overlap=32, max_side=128, min_length_global=0.0)


def test_index_is_built_without_reading_pixels(synthetic, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pixels read while building the index")

    monkeypatch.setattr(windows_module, "read_pyramid_window", forbidden)
    ds = WindowDataset([synthetic], [0, 1, 2], CFG)
    assert len(ds) > 0


def test_windows_and_targets(synthetic):
    ds = WindowDataset([synthetic], [0, 1], CFG)
    plan = plan_pyramid(SCENE_H, SCENE_W, 128, 32, 128, [0, 1])
    assert len(ds) < len(plan)  # empty windows skipped
    assert {e.window for e in ds.entries} <= set(plan)
    with rasterio.open(synthetic.image_path) as src:
        for i in range(len(ds)):
            s = ds[i]
            win = ds.entries[i].window
            assert (s.meta["level"], s.meta["col_off"], s.meta["row_off"]) == (win.level, win.col_off, win.row_off)
            assert s.image.dtype == torch.uint8 and s.image.shape == (3, win.height, win.width)
            np.testing.assert_array_equal(s.image.numpy(), read_pyramid_window(src, win))
            t = s.target
            assert len(t["boxes"]) > 0 and t["labels"].dtype == torch.int64 and (t["labels"] == 0).all()
            assert t["boxes"].dtype == torch.float32 and t["truncated"].dtype == torch.bool
            # Untruncated boxes are the scene boxes moved to the level and the window.
            for box, trunc, k in zip(t["boxes"], t["truncated"], ds.entries[i].targets.source):
                if not trunc:
                    expect = synthetic.boxes[k].clone()
                    expect[:4] /= win.scale
                    expect[0] -= win.col_off
                    expect[1] -= win.row_off
                    torch.testing.assert_close(box, expect)


def test_level_scaling_of_boxes(synthetic):
    ds = WindowDataset([synthetic], [1], CFG)
    # Level 1 is 230 x 150: windows at x = 0 and 102; the top-left box is whole in the first.
    first = ds.entries[0]
    assert (first.window.col_off, first.window.row_off) == (0, 0)
    k = first.targets.source.tolist().index(0)
    torch.testing.assert_close(first.targets.boxes[k], torch.tensor([30.0, 25.0, 40.0, 6.0, 0.2]))


def test_empty_windows(synthetic):
    n_all = len(plan_pyramid(SCENE_H, SCENE_W, 128, 32, 128, [0]))
    full = len(WindowDataset([synthetic], [0], CFG))
    n_empty = n_all - full
    assert n_empty > 2
    assert len(WindowDataset([synthetic], [0], WindowConfig(**{**CFG.__dict__, "filter_empty": False}))) == n_all
    half = WindowConfig(**{**CFG.__dict__, "empty_fraction": 0.5})
    a, b = WindowDataset([synthetic], [0], half), WindowDataset([synthetic], [0], half)
    assert len(a) == full + round(0.5 * n_empty)
    assert [e.window for e in a.entries] == [e.window for e in b.entries]  # seeded
    empty_items = [a[i] for i in range(len(a)) if len(a.entries[i].targets.boxes) == 0]
    assert empty_items and all(s.target["boxes"].shape == (0, 5) for s in empty_items)


def test_missing_levels_give_no_windows(synthetic):
    assert len(WindowDataset([synthetic], [5], CFG)) == 0


def test_global_crops(synthetic):
    cfg = WindowConfig(**{**CFG.__dict__, "with_global_crops": 2})
    ds = WindowDataset([synthetic], [0], cfg)
    with rasterio.open(synthetic.image_path) as src:
        for i in range(len(ds)):
            s = ds[i]
            win = ds.entries[i].window
            gc = s.global_crops
            assert gc.images.shape == (2, 3, 128, 128) and gc.levels == (1, 2)
            for r, (img, rel, tgt) in enumerate(zip(gc.images, gc.rel_boxes, gc.targets), start=1):
                d = 2**r
                crop = context_crops(win, SCENE_H, SCENE_W, r, 128)[-1].window
                np.testing.assert_array_equal(
                    img[:, : crop.height, : crop.width].numpy(), read_pyramid_window(src, crop).astype(np.float32)
                )
                # Padding where the level is smaller than the crop (level 2 is 115 x 75): the
                # normalisation mean, i.e. 0 once normalised, as inference pads.
                if crop.width < 128:
                    assert (img[:, :, crop.width :] == torch.tensor(PIXEL_MEAN).view(3, 1, 1)).all()
                # rel_box maps back onto the window footprint.
                torch.testing.assert_close(
                    rel * 128,
                    torch.tensor(
                        [
                            win.col_off / d - crop.col_off,
                            win.row_off / d - crop.row_off,
                            (win.col_off + win.width) / d - crop.col_off,
                            (win.row_off + win.height) / d - crop.row_off,
                        ],
                        dtype=torch.float32,
                    ),
                )
                assert tgt["boxes"].shape[1] == 5 and len(tgt["labels"]) == len(tgt["boxes"])
    batch = collate_windows([ds[0], ds[1]])
    assert len(batch.images) == 2 and len(batch.global_crops) == 2
    assert collate_windows([WindowDataset([synthetic], [0], CFG)[0]]).global_crops is None


def test_one_band_images_become_three(tmp_path, write_raster):
    gray = np.arange(64 * 80, dtype=np.uint8).reshape(1, 64, 80)
    path = write_raster(tmp_path / "g.png", gray, driver="PNG")
    item = DotaImage(path, torch.tensor([[40.0, 32.0, 30.0, 8.0, 0.0]]), torch.zeros(1, dtype=torch.bool), np.zeros((1, 8)))
    s = WindowDataset([item], [0], CFG)[0]
    assert s.image.shape == (3, 64, 80)
    assert all(torch.equal(s.image[c], torch.from_numpy(gray[0])) for c in range(3))


def test_nwpu_and_demo(shared_data):
    nwpu = load_dota_folder(shared_data / "nwpu-bridges" / "train")
    ds = WindowDataset(nwpu, [0])
    # Every image is at most 1038 px: one or two windows each, at least one with a bridge.
    assert len({e.image_index for e in ds.entries}) == len(nwpu)
    s = ds[0]
    assert s.image.shape[1:] == (s.meta["height"], s.meta["width"])

    (demo,) = load_dota_folder(shared_data / "glh-bridge-demo")
    local = WindowDataset([demo], [0])
    assert len(local) == 6  # 9 windows; the bridges (x 866..953, y 803..1261) miss the right column
    for e in local.entries:
        # Axis-aligned bridges: clipped boxes stay inside the window.
        hull_x = e.targets.boxes[:, 0:1] + torch.tensor([-0.5, 0.5]) * e.targets.boxes[:, 3:4]
        hull_y = e.targets.boxes[:, 1:2] + torch.tensor([-0.5, 0.5]) * e.targets.boxes[:, 2:3]
        assert hull_x.min() >= -1e-3 and hull_x.max() <= 1024 + 1e-3
        assert hull_y.min() >= -1e-3 and hull_y.max() <= 1024 + 1e-3
        assert e.targets.truncated.all()  # every window cuts the 458 px bridges
    top = WindowDataset([demo], [1], WindowConfig(with_global_crops=1))
    assert len(top) == 1
    s = top[0]
    assert s.image.shape == (3, 1024, 1024) and not s.target["truncated"].any()
    torch.testing.assert_close(s.target["boxes"][:, 2], torch.tensor([229.0, 227.5]))
    assert s.global_crops.images.shape == (1, 3, 1024, 1024)
    torch.testing.assert_close(s.global_crops.rel_boxes, torch.tensor([[0.0, 0.0, 0.5, 0.5]]))


def test_skipped_empty_windows_stay_reachable(synthetic):
    n_all = len(plan_pyramid(SCENE_H, SCENE_W, 128, 32, 128, [0]))
    ds = WindowDataset([synthetic], [0], CFG)
    assert len(ds.entries) + len(ds.spare) == n_all
    assert all(len(e.targets.boxes) == 0 for e in ds.spare)
    assert not {e.window for e in ds.spare} & {e.window for e in ds.entries}
    with rasterio.open(synthetic.image_path) as src:
        for j in range(len(ds.spare)):
            s = ds.spare_empty(j)
            assert s.target["boxes"].shape == (0, 5)
            np.testing.assert_array_equal(s.image.numpy(), read_pyramid_window(src, ds.spare[j].window))
    half = WindowDataset([synthetic], [0], WindowConfig(**{**CFG.__dict__, "empty_fraction": 0.5}))
    assert len(half.entries) + len(half.spare) == n_all  # those kept are not spare
    assert WindowDataset([synthetic], [0], WindowConfig(**{**CFG.__dict__, "filter_empty": False})).spare == []
