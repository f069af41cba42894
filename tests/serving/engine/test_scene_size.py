"""The scene-size guard (check_scene_size), on real GeoTIFFs: a 1 x 1 px scene and a header-only huge one."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine

from serving.engine.scene import (
    DEFAULT_MAX_PIXELS,
    MIN_SCENE_SIDE,
    SceneError,
    check_scene_size,
    open_scene,
)


def _huge_sparse_tiff(path, side: int = 200_000):
    """A 200,000 x 200,000 px GeoTIFF with no block written: BigTIFF, tiled and sparse, so a few KB."""
    profile = dict(driver="GTiff", width=side, height=side, count=1, dtype="uint8", crs="EPSG:32631",
                   transform=Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 5800000.0), tiled=True,
                   blockxsize=512, blockysize=512, BIGTIFF="YES", SPARSE_OK=True, compress="deflate")
    with rasterio.open(path, "w", **profile):
        pass
    return path


def test_one_pixel_scene_is_too_small(geotiff):
    info = open_scene(str(geotiff("dot.tif", np.ones((1, 1, 1), np.uint8))))
    with pytest.raises(SceneError, match=rf"too small: 1 x 1 px.*at least {MIN_SCENE_SIDE} px") as err:
        check_scene_size(info)
    assert "\n" not in str(err.value) and "dot.tif" in str(err.value)


def test_narrow_scene_is_too_small_and_minimum_passes(geotiff):
    narrow = open_scene(str(geotiff("strip.tif", np.ones((1, 500, MIN_SCENE_SIDE - 1), np.uint8))))
    with pytest.raises(SceneError, match="too small"):
        check_scene_size(narrow)
    check_scene_size(open_scene(str(geotiff("ok.tif", np.ones((1, MIN_SCENE_SIDE, MIN_SCENE_SIDE), np.uint8)))))


def test_huge_scene_is_refused_with_size_limit_and_option(tmp_path):
    path = _huge_sparse_tiff(tmp_path / "huge.tif")
    assert path.stat().st_size < 10_000_000  # header and an empty tile index only
    info = open_scene(str(path))
    assert (info.width, info.height) == (200_000, 200_000)
    with pytest.raises(SceneError) as err:
        check_scene_size(info)
    message = str(err.value)
    assert "\n" not in message
    assert "200000 x 200000" in message and "40,000,000,000" in message
    assert f"{DEFAULT_MAX_PIXELS:,}" in message and "--max-pixels" in message
    check_scene_size(info, max_pixels=200_000 * 200_000)  # exactly at the limit is allowed


def test_lower_limit_refuses_an_ordinary_scene(geotiff):
    info = open_scene(str(geotiff("s.tif", np.ones((1, 100, 100), np.uint8))))
    check_scene_size(info)
    with pytest.raises(SceneError, match="limit of 9,999"):
        check_scene_size(info, max_pixels=9_999)
