import warnings

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning

from hbdnet.data.raster import read_pyramid_window
from hbdnet.pyramid import PlanWindow, level_size

H, W = 1500, 2333  # odd sizes: levels floor the sides, windows reach the right/bottom border


def smooth_noise(seed: int, c: int = 3, h: int = H, w: int = W) -> np.ndarray:
    """uint8 image with both fine noise (for exactness) and structure."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 100 + 60 * np.sin(xx / 37.0)[None] * np.cos(yy / 23.0)[None]
    return np.clip(base + rng.integers(-40, 41, (c, h, w)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return smooth_noise(0)


@pytest.fixture(scope="module")
def reference(scene) -> dict[int, torch.Tensor]:
    full = torch.from_numpy(scene).float()[None]
    return {
        k: F.interpolate(full, scale_factor=1 / 2**k, mode="bilinear", align_corners=False, antialias=False)[0]
        for k in (1, 2, 3)
    }


@pytest.fixture(scope="module", params=["tiled", "untiled", "overviews"])
def geotiff(request, scene, tmp_path_factory, write_raster):
    """Without overviews the exact path uses decimated phase reads; with them, plain strip reads."""
    path = tmp_path_factory.mktemp("raster") / f"{request.param}.tif"
    profile = dict(tiled=True, blockxsize=256, blockysize=256) if request.param != "untiled" else {}
    write_raster(path, scene, compress="deflate", **profile)
    if request.param == "overviews":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(path, "r+")
        with ds:
            # Nearest overviews differ from the bilinear levels: any use of them would show.
            ds.build_overviews([2, 4, 8], Resampling.nearest)
    return path


def random_windows(level: int, n: int, seed: int) -> list[PlanWindow]:
    s = 2**level
    lh, lw = level_size(H, s), level_size(W, s)
    rng = np.random.default_rng(seed)
    wins = []
    for i in range(n):
        w, h = int(rng.integers(1, min(300, lw) + 1)), int(rng.integers(1, min(300, lh) + 1))
        if i == 0:  # flush with the right and bottom border of the level
            x, y = lw - w, lh - h
        elif i == 1:  # the whole level
            x, y, w, h = 0, 0, lw, lh
        else:
            x, y = int(rng.integers(0, lw - w + 1)), int(rng.integers(0, lh - h + 1))
        wins.append(PlanWindow(level, s, x, y, w, h))
    return wins


@pytest.mark.parametrize("level", [1, 2, 3])
def test_levels_equal_bilinear_interpolate(geotiff, reference, level):
    ref = reference[level]
    assert ref.shape[1:] == (level_size(H, 2**level), level_size(W, 2**level))
    with rasterio.open(geotiff) as ds:
        for win in random_windows(level, 6, seed=level):
            # A small chunk forces several strips per window.
            out = read_pyramid_window(ds, win, max_chunk_bytes=200_000)
            expect = ref[:, win.row_off : win.row_off + win.height, win.col_off : win.col_off + win.width]
            assert out.shape == (3, win.height, win.width) and out.dtype == np.uint8
            diff = np.abs(out.astype(np.float64) - expect.double().numpy())
            assert diff.max() <= 0.5
            # Exactly the float result rounded half up (cv2's INTER_LINEAR on uint8).
            np.testing.assert_array_equal(out, np.floor(expect.double().numpy() + 0.5).astype(np.uint8))


def test_level0_is_a_plain_read(geotiff, scene):
    with rasterio.open(geotiff) as ds:
        out = read_pyramid_window(ds, PlanWindow(0, 1, 2000, 1300, 333, 200))
    np.testing.assert_array_equal(out, scene[:, 1300:1500, 2000:2333])


def test_band_selection(geotiff, reference):
    win = PlanWindow(1, 2, 100, 50, 120, 90)
    with rasterio.open(geotiff) as ds:
        both = read_pyramid_window(ds, win)
        picked = read_pyramid_window(ds, win, bands=[3, 1])
        assert picked.shape == (2, 90, 120)
        np.testing.assert_array_equal(picked, both[[2, 0]])
        with pytest.raises(ValueError, match="band 4"):
            read_pyramid_window(ds, win, bands=[4])


class RecordingReader:
    """Delegates to a dataset and records the full-resolution footprint and kind of every read."""

    def __init__(self, ds):
        self._ds = ds
        self.read_pixels: list[int] = []
        self.decimated: list[bool] = []

    def __getattr__(self, name):
        return getattr(self._ds, name)

    def read(self, indexes=None, window=None, **kw):
        self.read_pixels.append(int(window.width) * int(window.height))
        self.decimated.append("out_shape" in kw)
        return self._ds.read(indexes, window=window, **kw)


def test_memory_is_bounded_by_the_chunk(geotiff):
    win = PlanWindow(3, 8, 0, 0, 291, 187)  # footprint 2328 x 1496 px
    with rasterio.open(geotiff) as ds:
        rec = RecordingReader(ds)
        out = read_pyramid_window(rec, win, max_chunk_bytes=1_000_000)
        np.testing.assert_array_equal(out, read_pyramid_window(ds, win))
        has_overviews = bool(ds.overviews(1))
    assert len(rec.read_pixels) > 1
    assert max(rec.read_pixels) * 3 <= 1_000_000
    # Decimated reads only where GDAL cannot substitute an overview.
    assert all(d != has_overviews for d in rec.decimated)


def test_exact_ignores_overviews_and_overview_mode_uses_them(tmp_path, write_raster, scene):
    # Even sides, so that GDAL's 2x overview grid is exactly the level-1 grid.
    img = np.ascontiguousarray(scene[:, :512, :768])
    path = write_raster(tmp_path / "ovr.tif", img, tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "r+") as ds:
        ds.build_overviews([2, 4], Resampling.nearest)  # deliberately not the bilinear level
    ref = F.interpolate(torch.from_numpy(img).double()[None], scale_factor=0.5, mode="bilinear", align_corners=False)[0]
    win = PlanWindow(1, 2, 10, 20, 200, 150)
    with rasterio.open(path) as ds:
        assert ds.overviews(1) == [2, 4]
        exact = read_pyramid_window(ds, win)
        fast = read_pyramid_window(ds, win, resampling="overview")
    with rasterio.open(path, OVERVIEW_LEVEL=0) as ov:
        overview = ov.read(window=rasterio.windows.Window(10, 20, 200, 150))
    expect = np.floor(ref[:, 20:170, 10:210].numpy() + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(exact, expect)
    np.testing.assert_array_equal(fast, overview)  # GDAL served the overview
    assert not np.array_equal(fast, exact)


def test_overview_mode_without_overviews_is_a_box_filter(geotiff, scene):
    win = PlanWindow(2, 4, 30, 40, 50, 60)
    with rasterio.open(geotiff) as ds:
        if ds.overviews(1):
            pytest.skip("covered by the overview test")
        fast = read_pyramid_window(ds, win, resampling="overview")
    blocks = scene[:, 160:400, 120:320].reshape(3, 60, 4, 50, 4).astype(np.float64).mean(axis=(2, 4))
    assert np.abs(fast - blocks).max() <= 1.0


def test_float_data(tmp_path, write_raster):
    rng = np.random.default_rng(3)
    data = rng.normal(size=(2, 301, 517)).astype(np.float32)
    path = write_raster(tmp_path / "f.tif", data)
    ref = F.interpolate(torch.from_numpy(data)[None], scale_factor=1 / 4, mode="bilinear", align_corners=False)[0]
    with rasterio.open(path) as ds:
        out = read_pyramid_window(ds, PlanWindow(2, 4, 0, 0, 129, 75))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-6)


def test_png_is_exact(tmp_path, write_raster):
    img = smooth_noise(5, h=203, w=341)
    path = write_raster(tmp_path / "a.png", img, driver="PNG")
    ref = F.interpolate(torch.from_numpy(img).double()[None], scale_factor=1 / 2, mode="bilinear", align_corners=False)[0]
    with rasterio.open(path) as ds:
        out = read_pyramid_window(ds, PlanWindow(1, 2, 0, 0, 170, 101))
    np.testing.assert_array_equal(out, np.floor(ref.numpy() + 0.5).astype(np.uint8))


def test_rejects_bad_windows(geotiff):
    with rasterio.open(geotiff) as ds:
        with pytest.raises(ValueError, match="outside level"):
            read_pyramid_window(ds, PlanWindow(1, 2, 1100, 0, 67, 10))  # level 1 is 1166 wide
        with pytest.raises(ValueError, match="even"):
            read_pyramid_window(ds, PlanWindow(1, 3, 0, 0, 10, 10))
        with pytest.raises(ValueError, match="resampling"):
            read_pyramid_window(ds, PlanWindow(1, 2, 0, 0, 10, 10), resampling="cubic")


def test_demo_png_level1(shared_data):
    path = shared_data / "glh-bridge-demo" / "images" / "9861.png"
    if not path.exists():
        pytest.skip("glh-bridge-demo image missing")
    with rasterio.open(path) as ds:
        full = ds.read()
        out = read_pyramid_window(ds, PlanWindow(1, 2, 512, 300, 512, 724))
    ref = F.interpolate(torch.from_numpy(full).float()[None], scale_factor=0.5, mode="bilinear", align_corners=False)[0]
    expect = np.floor(ref[:, 300:1024, 512:1024].double().numpy() + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out, expect)
