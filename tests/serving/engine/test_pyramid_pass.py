"""The one-pass pyramid reader against the per-window exact reads, on real GeoTIFFs written with rasterio."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp

from hbdnet.data.raster import read_pyramid_window
from hbdnet.pyramid import PlanWindow, context_crops
from serving.engine import pyramid_pass as pass_module
from serving.engine.pyramid_pass import PassConfig, PyramidPass, level_rows
from serving.engine.reader import ReadItem, WindowReader, plan_scene
from serving.engine.scene import open_scene
from serving.testing.simulate import texture

WINDOW, OVERLAP = 256, 40


def check_pass(path, *, bands=None, config: PassConfig = PassConfig(), context_levels: int = 0,
               coverage_scan: bool = True) -> PyramidPass:
    """Run the pass over the scene's plan; every window must equal WindowReader's (image) and
    read_pyramid_window's (raw level pixels), bit for bit (NaN where NaN)."""
    info = open_scene(str(path))
    plan = plan_scene(info, bands=bands, window=WINDOW, overlap=OVERLAP)
    assert max(w.level for w in plan.plan) >= 3, "the test scene should have several levels"
    seen = {}
    with WindowReader(plan.spec) as ref, rasterio.open(str(path)) as ds, \
            PyramidPass(plan.spec, plan.items, masked=info.masked, context_levels=context_levels,
                        context_size=WINDOW, config=config) as one_pass:
        for item, image in one_pass:
            data, _ = one_pass.window_data(item.window)
            expected = read_pyramid_window(ds, item.window, bands=plan.spec.read_bands)
            assert data.dtype == expected.dtype
            np.testing.assert_array_equal(data, expected, err_msg=str(item.window))
            np.testing.assert_array_equal(image, ref.read(item.window, item.needs_mask), err_msg=str(item.window))
            for crop in (context_crops(item.window, info.height, info.width, context_levels, WINDOW)
                         if context_levels and item.window.level == 0 else []):
                np.testing.assert_array_equal(one_pass.read(crop.window), ref.read(crop.window, True))
            seen[item.index] = item
    skipped = set(one_pass.stats.skipped)
    assert set(seen) | skipped == {it.index for it in plan.items} and not set(seen) & skipped
    return one_pass


def test_uint8_rgb_odd_size_every_level_is_exact(geotiff):
    path = geotiff("rgb.tif", texture(3, 1237, 2311), block=128)
    p = check_pass(path)
    assert p.stats.decoded_rows == 1237  # every row decoded once
    assert p.stats.store_bytes_on_disk == 0
    p = check_pass(path, config=PassConfig(strip_bytes=1))  # strips of one block row (128)
    assert p.stats.decoded_rows == 1237 and p.stats.strips == 10
    assert p.stats.max_rows_held <= WINDOW + 2 * 128  # a window's rows and a strip, not the scene


def test_level_stores_in_temporary_files_give_the_same_windows(geotiff, tmp_path):
    path = geotiff("rgb.tif", texture(3, 1100, 2085, seed=3), block=256)
    config = PassConfig(buffer_bytes=20_000, strip_bytes=1, temp_dir=str(tmp_path / "spill"))
    (tmp_path / "spill").mkdir()
    p = check_pass(path, config=config)
    assert p.stats.store_bytes_on_disk > 0 and p.stats.store_bytes_in_memory <= 20_000
    assert p.stats.strips > 4  # small strips: the windows come from several strips each
    assert list((tmp_path / "spill").iterdir()) == []  # temporary files removed on close


def test_uint16_single_band_striped_with_stretch(geotiff):
    path = geotiff("pan.tif", texture(1, 1500, 1333, np.uint16, seed=1, high=4000), tiled=False, block=64)
    check_pass(path)


def test_float32_with_nodata_nan_and_overviews(geotiff):
    data = texture(3, 1111, 1400, np.float32, seed=2) / 7
    data[:, 100:400, 200:900] = -9999.0  # nodata block, across windows of several levels
    data[1, 700:720, 50:60] = np.nan
    path = geotiff("f32.tif", data.astype(np.float32), nodata=-9999.0, overviews=(2, 4))
    p = check_pass(path)
    assert p._phase_order is False  # overviews: the reference sums in its strip order


def test_rgba_alpha_with_empty_windows_skipped_like_the_coverage_plan(geotiff):
    rgb = texture(3, 1300, 1800, seed=4)
    alpha = np.full((1, 1300, 1800), 255, np.uint8)
    alpha[:, :, :700] = 0  # the left part is empty: its level-0 windows have no valid pixel
    alpha[:, 900:905, 1000:1003] = 0
    path = geotiff("rgba.tif", np.concatenate([rgb, alpha]),
                   colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha])
    info = open_scene(str(path))
    plan = plan_scene(info, window=WINDOW, overlap=OVERLAP)
    assert plan.skipped
    # Without a coverage scan (every window planned) the pass itself skips exactly the empty ones.
    unscanned = [ReadItem(i, w, True) for i, w in enumerate(plan.plan)]
    with PyramidPass(plan.spec, unscanned, masked=True, context_size=WINDOW) as p:
        produced = [item.index for item, _ in p]
    assert sorted(p.stats.skipped) == plan.skipped
    assert sorted(produced) == [it.index for it in plan.items]
    check_pass(path)


def test_four_bands_and_a_mask_band_and_chosen_bands(geotiff):
    mask = np.ones((1200, 1250), bool)
    mask[300:800, 300:500] = False
    path = geotiff("m.tif", texture(4, 1200, 1250, seed=5), mask=mask)
    check_pass(path, bands=(3, 1, 2))


def test_context_crops_are_served_from_the_level_stores(geotiff):
    path = geotiff("ctx.tif", texture(3, 1500, 1700, seed=6))
    check_pass(path, context_levels=2, config=PassConfig(read_ahead=False))


def test_level_rows_is_the_mean_of_the_two_by_two_block():
    strip = np.arange(2 * 8 * 12, dtype=np.int32).reshape(2, 8, 12) % 251
    strip = strip.astype(np.uint16)
    out = level_rows(strip, 0, 4, 2, 3, True)
    s = strip.astype(np.int64)
    expected = (s[:, 1::4, 1::4] + s[:, 2::4, 1::4] + s[:, 1::4, 2::4] + s[:, 2::4, 2::4] + 2) // 4
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError):
        level_rows(strip, 2, 4, 2, 3, True)


def test_decode_errors_reach_the_consumer(geotiff, monkeypatch):
    path = geotiff("e.tif", texture(3, 1200, 1200))
    info = open_scene(str(path))
    plan = plan_scene(info, window=WINDOW, overlap=OVERLAP)

    def broken(self):
        raise OSError("disk gone")
        yield  # pragma: no cover

    monkeypatch.setattr(pass_module.PyramidPass, "_decode", broken)
    with PyramidPass(plan.spec, plan.items, masked=False) as p, pytest.raises(OSError, match="disk gone"):
        list(p)


def test_a_window_beyond_the_rows_passed_is_refused(geotiff):
    path = geotiff("r.tif", texture(3, 1200, 1200))
    plan = plan_scene(open_scene(str(path)), window=WINDOW, overlap=OVERLAP)
    with PyramidPass(plan.spec, plan.items, masked=False) as p:
        with pytest.raises(RuntimeError):
            p.window_data(PlanWindow(0, 1, 0, 0, 10, 10))


def test_int16_negative_values_round_like_the_reference(geotiff):
    data = (texture(3, 1100, 1150, np.int32, seed=12, high=2000) - 1000).astype(np.int16)
    check_pass(geotiff("i16.tif", data), config=PassConfig(strip_bytes=1))


def test_strips_of_three_rows(geotiff):
    """A striped file whose strips (3 rows) are not a multiple of the scales: the pass decodes
    lcm(3, 8) = 24 rows at a time, so the two rows of every level row are in one strip."""
    path = geotiff("s3.tif", texture(3, 1030, 1200, seed=13), tiled=False, block=48)
    with rasterio.open(path) as ds:
        assert ds.block_shapes[0] == (3, 1200)
    p = check_pass(path, config=PassConfig(strip_bytes=1))
    assert p.strip_rows() % 3 == 0 and p.strip_rows() % p.max_scale == 0 and p.stats.strips > 10
