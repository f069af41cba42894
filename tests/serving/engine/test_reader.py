"""Scene opening and the streaming reader, on real GeoTIFFs written with rasterio."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.windows import Window

import serving.engine.reader as reader_module
from hbdnet.data.raster import read_pyramid_window
from hbdnet.pyramid import plan_pyramid
from serving.engine.reader import (
    Coverage,
    StripedSceneWarning,
    WindowReader,
    cache_mb_for,
    iter_scene_windows,
    plan_scene,
    prepare_read,
    scan_scene,
)
from serving.engine.gdal_cache import CacheHold, cache_bytes
from serving.engine.scene import SceneError, gdal_path, open_scene

SHARED_DATA = Path(os.environ.get("HBDNET_SHARED_DATA", Path(__file__).resolve().parents[3] / ".." / "shared" / "data"))
SHARED_GEOTIFF = SHARED_DATA / "geotiff"
RGB_INTERP = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]


def texture(c: int, h: int, w: int, dtype=np.uint8, seed: int = 0, low: int = 0, high: int = 256) -> np.ndarray:
    """Smooth-ish random image (noise on a gradient), so that resampled levels are not all alike."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = (xx * 0.13 + yy * 0.07)[None] + np.arange(c)[:, None, None] * 17
    img = (base + rng.integers(0, 40, (c, h, w))) % (high - low) + low
    return img.astype(dtype)


# --- open_scene -------------------------------------------------------------------------------------

def test_open_scene_describes_layout(geotiff):
    data = texture(3, 300, 400)
    tiled = open_scene(str(geotiff("t.tif", data, block=128, overviews=(2, 4))))
    assert (tiled.width, tiled.height, tiled.count) == (400, 300, 3)
    assert tiled.dtypes == ("uint8",) * 3 and tiled.crs.to_epsg() == 32631
    assert tiled.tiled and tiled.block_shapes[0] == (128, 128) and tiled.overviews == (2, 4)
    assert not tiled.masked and tiled.usable_bands == (1, 2, 3)

    striped = open_scene(str(geotiff("s.tif", data, tiled=False)))
    assert striped.striped and striped.block_shapes[0][1] == 400 and striped.overviews == ()

    rgba = np.concatenate([data, np.full((1, 300, 400), 255, np.uint8)])
    alpha = open_scene(str(geotiff("a.tif", rgba, colorinterp=RGB_INTERP + [ColorInterp.alpha])))
    assert alpha.alpha_bands == (4,) and alpha.masked and alpha.usable_bands == (1, 2, 3)

    masked = open_scene(str(geotiff("m.tif", data, mask=np.ones((300, 400), bool))))
    assert masked.per_dataset_mask and not masked.alpha_bands and masked.masked

    nodata = open_scene(str(geotiff("n.tif", data, nodata=0)))
    assert nodata.has_nodata and nodata.nodata == (0.0, 0.0, 0.0) and nodata.masked


def test_open_scene_errors_are_one_line(tmp_path, geotiff):
    (tmp_path / "notes.txt").write_text("not a raster")
    cplx = geotiff("c.tif", np.ones((1, 20, 20), np.complex64), compress=None)
    for uri, fragment in [(str(tmp_path / "missing.tif"), "not found"),
                          (str(tmp_path / "notes.txt"), "cannot open"),
                          (str(cplx), "no usable image band")]:
        with pytest.raises(SceneError, match=fragment) as info:
            open_scene(uri)
        assert "\n" not in str(info.value)


def test_gdal_path_maps_urls():
    assert gdal_path("https://host/a.tif") == "/vsicurl/https://host/a.tif"
    assert gdal_path("http://host/a.tif") == "/vsicurl/http://host/a.tif"
    assert gdal_path("s3://bucket/key/a.tif") == "/vsis3/bucket/key/a.tif"
    assert gdal_path("/vsicurl/https://host/a.tif") == "/vsicurl/https://host/a.tif"
    assert gdal_path("/data/a.tif") == "/data/a.tif"


# --- windows and pixels -----------------------------------------------------------------------------

def test_uint8_rgb_windows_follow_the_plan_and_match_pyramid_reads(geotiff):
    path = geotiff("rgb.tif", texture(3, 700, 1100))
    got = list(iter_scene_windows(str(path), window=256, overlap=56))
    plan = plan_pyramid(700, 1100, window=256, overlap=56, max_side=256)
    assert [w for w, _ in got] == plan  # level by level, row-major, nothing skipped
    assert max(w.level for w in plan) == 3
    with rasterio.open(path) as ds:
        for w, img in got:
            assert img.dtype == np.uint8 and img.shape == (3, w.height, w.width)
            if w.level == 0:
                expected = ds.read(window=Window(w.col_off, w.row_off, w.width, w.height))
            else:
                expected = read_pyramid_window(ds, w)
            np.testing.assert_array_equal(img, expected)


def test_reading_is_lazy(geotiff, monkeypatch):
    path = geotiff("rgb.tif", texture(3, 600, 600))
    calls = []

    def counting(ds, win, bands=None, resampling="exact", **kw):
        calls.append(win)
        return read_pyramid_window(ds, win, bands, resampling, **kw)

    monkeypatch.setattr(reader_module, "read_pyramid_window", counting)
    it = iter_scene_windows(str(path), window=256, overlap=56)
    assert calls == []
    first, _ = next(it)
    assert calls == [first]
    rest = list(it)
    assert len(calls) == 1 + len(rest)


def test_reads_run_inside_the_sized_gdal_cache(geotiff, monkeypatch):
    path = geotiff("rgb.tif", texture(3, 300, 300))
    before = cache_bytes()
    seen = []

    def recording(ds, win, bands=None, resampling="exact", **kw):
        seen.append(cache_bytes())
        return read_pyramid_window(ds, win, bands, resampling, **kw)

    monkeypatch.setattr(reader_module, "read_pyramid_window", recording)
    spec, _ = prepare_read(open_scene(str(path)), window=256)
    list(iter_scene_windows(str(path), window=256, overlap=56))
    assert spec.cache_mb * 2**20 != before
    assert seen and all(v == spec.cache_mb * 2**20 for v in seen)  # rasterio takes bytes
    assert cache_bytes() == before  # put back when the reader closes


def test_threads_reading_together_keep_the_cache_budget(geotiff, monkeypatch):
    """One reader per thread, as a worker's read-ahead threads: no thread's exit lifts the limit while
    another reads (rasterio.Env restores the cache it found on exit, per thread)."""
    path = geotiff("rgb.tif", texture(3, 600, 600))
    spec, _ = prepare_read(open_scene(str(path)), window=256)
    before = cache_bytes()
    plan = plan_scene(open_scene(str(path)), window=256, overlap=56)
    seen = []

    def recording(ds, win, bands=None, resampling="exact", **kw):
        seen.append(cache_bytes())
        return read_pyramid_window(ds, win, bands, resampling, **kw)

    monkeypatch.setattr(reader_module, "read_pyramid_window", recording)
    readers = [WindowReader(spec) for _ in range(3)]

    def read_all(reader):
        for _ in range(5):
            for item in plan.items:
                reader.read(item.window)

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(read_all, readers))
    readers[0].close()
    assert cache_bytes() == spec.cache_mb * 2**20  # the others still hold it
    for r in readers[1:]:
        r.close()
    assert len(seen) == 15 * len(plan.items) and set(seen) == {spec.cache_mb * 2**20}
    assert cache_bytes() == before


def test_cache_holds_take_the_largest_and_restore():
    before = cache_bytes()
    a, b = CacheHold(40 * 2**20), CacheHold(90 * 2**20)
    assert cache_bytes() == 90 * 2**20
    b.release()
    assert cache_bytes() == 40 * 2**20
    b.release()  # twice is harmless
    with CacheHold(20 * 2**20):
        assert cache_bytes() == 40 * 2**20
    a.release()
    assert cache_bytes() == before


def test_scene_smaller_than_a_window(geotiff):
    got = list(iter_scene_windows(str(geotiff("small.tif", texture(3, 200, 300))), window=1024))
    assert len(got) == 1
    w, img = got[0]
    assert (w.level, w.col_off, w.row_off, w.width, w.height) == (0, 0, 0, 300, 200)
    assert img.shape == (3, 200, 300)


def test_striped_scene_warns_once_and_reads_the_same_pixels(geotiff):
    data = texture(3, 600, 700)
    tiled = list(iter_scene_windows(str(geotiff("t.tif", data)), window=256, overlap=56))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        striped = list(iter_scene_windows(str(geotiff("s.tif", data, tiled=False)), window=256, overlap=56))
    assert sum(issubclass(c.category, StripedSceneWarning) for c in caught) == 1
    assert [w for w, _ in striped] == [w for w, _ in tiled]
    for (_, a), (_, b) in zip(tiled, striped):
        np.testing.assert_array_equal(a, b)


def test_overview_mode_uses_the_files_overviews(geotiff):
    path = geotiff("ov.tif", texture(3, 600, 600), overviews=(2, 4))
    exact = list(iter_scene_windows(str(path), window=256, overlap=56))
    fast = list(iter_scene_windows(str(path), window=256, overlap=56, resampling="overview"))
    assert [w for w, _ in exact] == [w for w, _ in fast]
    for (w, a), (_, b) in zip(exact, fast):
        diff = np.abs(a.astype(int) - b.astype(int))
        if w.level == 0:
            assert diff.max() == 0
        elif w.level == 1:  # bilinear 1/2 is the 2 x 2 mean, as the average overview (up to rounding)
            assert diff.max() <= 1
        else:  # a box filter over 4 x 4 or more pixels: close to the bilinear level, not equal to it
            assert 0 < diff.mean() < 20
    with pytest.raises(ValueError, match="resampling"):
        list(iter_scene_windows(str(path), resampling="cubic"))


# --- bands and value stretch ------------------------------------------------------------------------

def test_single_band_uint16_is_stretched_and_replicated(geotiff):
    ramp = np.arange(400 * 500, dtype=np.uint16).reshape(1, 400, 500) % 60000
    path = geotiff("pan.tif", ramp)
    spec, _ = prepare_read(open_scene(str(path)))
    lo, hi = np.percentile(ramp, [2, 98])
    assert spec.read_bands == (1,) and spec.rgb == (0, 0, 0)
    assert spec.stretch.low == pytest.approx((lo,)) and spec.stretch.high == pytest.approx((hi,))
    (_, img), = list(iter_scene_windows(str(path)))
    assert img.dtype == np.uint8 and img.shape == (3, 400, 500)
    np.testing.assert_array_equal(img[0], img[1])
    np.testing.assert_array_equal(img[0], img[2])
    expected = np.rint(np.clip((ramp[0].astype(np.float64) - lo) * 255 / (hi - lo), 0, 255))
    assert np.abs(img[0].astype(int) - expected).max() <= 1
    assert 0.01 < (img[0] == 0).mean() < 0.03 and 0.01 < (img[0] == 255).mean() < 0.03


def test_stretch_samples_full_resolution_pixels_even_with_overviews(geotiff):
    rng = np.random.default_rng(3)
    data = rng.gamma(2.0, 800.0, (2, 600, 500)).astype(np.uint16)
    expected = np.percentile(data.reshape(2, -1), [2, 98], axis=1)  # (2 percentiles, 2 bands)
    for name, options in [("plain.tif", {}), ("ov.tif", {"overviews": (2, 4, 8)})]:
        path = geotiff(name, data, **options)
        with rasterio.open(path) as ds:
            stretch, coverage = scan_scene(ds, (1, 2), stretch=True, masked=False, max_side=100)  # 1 in 6
        assert coverage is None
        # averaged overviews would narrow the spread (2nd percentile about 1085 instead of 174)
        np.testing.assert_allclose(stretch.low, expected[0], rtol=0.1)
        np.testing.assert_allclose(stretch.high, expected[1], rtol=0.1)


def test_float32_stretch_ignores_nodata_and_nan(geotiff):
    data = texture(3, 300, 300, dtype=np.float32, high=100) / 10.0  # values in [0, 10)
    data[:, :, :100] = -9999.0  # a nodata border
    data[0, 150, 150] = np.nan
    path = geotiff("f.tif", data.astype(np.float32), nodata=-9999.0)
    spec, coverage = prepare_read(open_scene(str(path)))
    assert all(0.0 <= v < 10.0 for v in spec.stretch.low + spec.stretch.high)
    assert coverage is not None
    (_, img), = list(iter_scene_windows(str(path)))
    assert (img[:, :, :100] == 0).all()  # masked pixels are 0 in every channel
    assert img[0, 150, 150] == 0  # NaN
    assert img[:, :, 100:].mean() > 60


def test_band_selection_rules(geotiff):
    data = texture(4, 120, 150)
    rgbn = str(geotiff("rgbn.tif", data))
    (_, img), = list(iter_scene_windows(rgbn))
    np.testing.assert_array_equal(img, data[:3])
    (_, img), = list(iter_scene_windows(rgbn, bands=(4, 2, 1)))
    np.testing.assert_array_equal(img, data[[3, 1, 0]])
    (_, img), = list(iter_scene_windows(rgbn, bands=(2,)))
    np.testing.assert_array_equal(img, data[[1, 1, 1]])
    with pytest.raises(SceneError, match="out of range"):
        list(iter_scene_windows(rgbn, bands=(1, 2, 5)))
    two = str(geotiff("two.tif", data[:2]))
    with pytest.raises(SceneError, match="bands=\\(r, g, b\\)"):
        list(iter_scene_windows(two))


def test_alpha_band_is_a_mask_not_a_channel(geotiff):
    data = texture(3, 200, 260, low=1)
    alpha = np.full((1, 200, 260), 255, np.uint8)
    alpha[0, :, :60] = 0
    path = geotiff("rgba.tif", np.concatenate([data, alpha]), colorinterp=RGB_INTERP + [ColorInterp.alpha])
    (_, img), = list(iter_scene_windows(str(path)))
    assert (img[:, :, :60] == 0).all()
    np.testing.assert_array_equal(img[:, :, 60:], data[:, :, 60:])


# --- nodata, masks and skipping ---------------------------------------------------------------------

def _scene_with_nodata_left(h: int, w: int, invalid_cols: int, nodata: int = 7) -> np.ndarray:
    data = texture(3, h, w, low=8)  # valid values never equal the nodata value
    data[:, :, :invalid_cols] = nodata
    return data


def test_windows_entirely_nodata_are_skipped_and_partial_ones_masked(geotiff, monkeypatch):
    EDGE = 561  # odd, so that a nearest-neighbour level mask would differ from the exact one
    monkeypatch.setattr(WindowReader, "mask_chunk_bytes", 5000)  # coarse-level masks in many strips
    data = _scene_with_nodata_left(512, 1024, EDGE)  # columns < EDGE are nodata
    data[0, 10, 700] = 7  # only band 1 equals nodata: the pixel stays valid (any band valid)
    path = str(geotiff("nd.tif", data, nodata=7))
    scene_plan = plan_scene(open_scene(path), window=256, overlap=56)
    skipped = [scene_plan.plan[i] for i in scene_plan.skipped]
    assert skipped and all(w.scene_bounds()[2] <= EDGE for w in skipped)
    assert all(w.scene_bounds()[2] > EDGE for w in (it.window for it in scene_plan.items))
    needs_mask = {it.window for it in scene_plan.items if it.needs_mask}
    assert needs_mask == {it.window for it in scene_plan.items if it.window.scene_bounds()[0] < EDGE}

    got = dict(iter_scene_windows(path, window=256, overlap=56))
    assert list(got) == [it.window for it in scene_plan.items]
    with rasterio.open(path) as ds:
        for w, img in got.items():
            if w.level == 0:
                expected = data[:, w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width].copy()
            else:
                expected = read_pyramid_window(ds, w)
            # A level pixel is valid when its 2 x 2 full-resolution block (from column s * j + s/2 - 1)
            # is: the first valid level column is the first j with s * j + s/2 - 1 >= EDGE.
            s = w.scale
            first_valid = -(-(EDGE - s // 2 + 1) // s) if s > 1 else EDGE
            expected[:, :, : max(0, first_valid - w.col_off)] = 0
            np.testing.assert_array_equal(img, expected)
    w700 = next(w for w in got if w.level == 0 and w.col_off <= 700 < w.col_off + w.width and w.row_off == 0)
    assert got[w700][0, 10, 700 - w700.col_off] == 7


def test_a_single_valid_pixel_keeps_its_windows(geotiff):
    data = np.zeros((1, 1000, 1000), np.uint8)
    data[0, 300, 700] = 200
    path = geotiff("one.tif", data, nodata=0)
    info = open_scene(str(path))
    with rasterio.open(path) as ds:
        stretch, coverage = scan_scene(ds, (1,), stretch=False, masked=True, max_cells=50)  # 20 px cells
    assert stretch is None
    assert coverage.cell == 20 and coverage.any_valid.sum() == 1 and not coverage.all_valid.any()
    scene_plan = plan_scene(info, window=256, overlap=56)
    kept = [it.window for it in scene_plan.items]
    assert kept and all(it.needs_mask for it in scene_plan.items)
    for w in scene_plan.plan:
        x0, y0, x1, y1 = w.scene_bounds()
        inside = x0 <= 700 < x1 and y0 <= 300 < y1
        assert (w in kept) == inside
        assert coverage.classify(w) is (Coverage.PARTIAL if inside else Coverage.EMPTY)


def test_per_dataset_mask_band(geotiff):
    data = texture(3, 300, 300, low=1)
    valid = np.ones((300, 300), bool)
    valid[:120] = False
    path = str(geotiff("msk.tif", data, mask=valid))
    (_, img), = list(iter_scene_windows(path))
    assert (img[:, :120] == 0).all()
    np.testing.assert_array_equal(img[:, 120:], data[:, 120:])


# --- GDAL cache sizing ------------------------------------------------------------------------------

def test_cache_holds_one_row_of_windows_blocks_and_a_level_chunk(geotiff):
    small = open_scene(str(geotiff("t.tif", texture(3, 64, 64), block=16)))
    wide = dataclasses.replace(small, width=16384, height=16384, block_shapes=((512, 512),) * 3)
    half = dataclasses.replace(wide, width=8192, height=8192)
    # 3 block rows (1024 px windows straddle 3 of 512) x 16384 px x 3 bytes, plus a 64 MB level chunk
    row = 3 * 512 * 16384 * 3
    assert cache_mb_for(wide, (1, 2, 3), 1024) == int(np.ceil((row + 64 * 2**20) * 1.1 / 2**20)) + 8
    assert cache_mb_for(half, (1, 2, 3), 1024) == int(np.ceil((row / 2 + 64 * 2**20) * 1.1 / 2**20)) + 8
    assert cache_mb_for(small, (1, 2, 3), 1024) == 32  # the floor
    striped = dataclasses.replace(wide, block_shapes=((1, 16384),) * 3, tiled=False)
    assert cache_mb_for(striped, (1, 2, 3), 1024) == int(np.ceil((1025 * 16384 * 3 + 64 * 2**20) * 1.1 / 2**20)) + 8


# --- real imagery -----------------------------------------------------------------------------------

@pytest.mark.skipif(not SHARED_GEOTIFF.is_dir(), reason="shared GeoTIFFs not available")
def test_real_uint16_pan_scene():
    path = SHARED_GEOTIFF / "solaris-spacenet" / "atlanta_pan_0.5m_sample_geotiff.tif"
    if not path.exists():
        pytest.skip(f"{path} missing")
    info = open_scene(str(path))
    assert info.crs.to_epsg() == 32616 and info.dtypes == ("uint16",) and (info.width, info.height) == (900, 900)
    assert info.striped
    with pytest.warns(StripedSceneWarning):
        got = list(iter_scene_windows(str(path)))
    assert len(got) == 1
    w, img = got[0]
    assert img.shape == (3, 900, 900) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[0], img[2])
    # the 2-98 % stretch: about 2 % of the pixels at each end, the rest spread over the range
    assert 0.005 < (img[0] == 0).mean() < 0.05 and 0.005 < (img[0] == 255).mean() < 0.05
    assert len(np.unique(img[0])) > 200
    with pytest.warns(StripedSceneWarning):
        small = list(iter_scene_windows(str(path), window=512, overlap=100))
    assert len(small) == 4 + 1 and small[-1][0].level == 1
