"""The scene-size guard (check_scene_size), on real GeoTIFFs: a 1 x 1 px scene and a header-only huge one."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine

from serving.engine.detectors import NoopSpec
from serving.engine.scene import DEFAULT_MAX_PIXELS, MIN_SCENE_SIDE, SceneError, check_scene_size, open_scene


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


# --- wired into the engine and the CLI ----------------------------------------------------------------

def test_opening_a_scene_checks_the_size(tmp_path, geotiff):
    from serving.detect import DetectOptions, open_checked

    with pytest.raises(SceneError, match="too small"):
        open_checked(str(geotiff("dot.tif", np.ones((1, 1, 1), np.uint8))), DetectOptions())
    with pytest.raises(SceneError, match="too large"):
        open_checked(str(_huge_sparse_tiff(tmp_path / "huge.tif")), DetectOptions())  # before any scan of its pixels
    ok = str(geotiff("ok.tif", np.ones((1, 64, 64), np.uint8)))
    assert open_checked(ok, DetectOptions()).width == 64
    with pytest.raises(SceneError, match="limit of 100 "):
        open_checked(ok, DetectOptions(max_pixels=100))


def test_cli_max_pixels_option(tmp_path, geotiff, capsys):
    from serving.cli.arguments import max_pixels
    from serving.cli.main import build_parser, main

    for command in (["detect", "x.tif"], ["batch", "x.tif", "-o", "out"]):
        assert max_pixels(build_parser().parse_args(command)) == DEFAULT_MAX_PIXELS
        assert max_pixels(build_parser().parse_args([*command, "--max-pixels", "5_000"])) == 5000
    assert f"{DEFAULT_MAX_PIXELS:,}" in build_parser()._subparsers._group_actions[0].choices["detect"].format_help()
    with pytest.raises(SystemExit) as exit_info:
        main(["detect", "x.tif", "--max-pixels", "0"])
    assert exit_info.value.code == 2 and "--max-pixels" in capsys.readouterr().err

    # The guard answers before any model is loaded or worker started: the test double needs neither.
    from serving.batch.inputs import SceneInput
    from serving.batch.runner import run_batch
    from serving.detect import DetectOptions
    from serving.engine.pools import PoolConfig
    from serving.model_ref import model_ref
    from serving.testing.engine_runs import detect_to_file

    scene = str(geotiff("s.tif", np.ones((1, 64, 64), np.uint8)))
    noop = model_ref(NoopSpec())
    with pytest.raises(SceneError, match="too large.*limit of 4,095"):
        detect_to_file(scene, tmp_path / "o.gpkg", noop, DetectOptions(max_pixels=4095),
                       pool_config=PoolConfig(workers=0))
    assert detect_to_file(scene, tmp_path / "o.gpkg", noop, DetectOptions(max_pixels=4096),
                          pool_config=PoolConfig(workers=0)).windows == 1
    summary = run_batch([SceneInput(scene, "s", scene)], tmp_path / "b", noop,
                        options=DetectOptions(max_pixels=4095), pool_config=PoolConfig(workers=0))
    assert summary.failed == 1 and "--max-pixels" in summary.records[0]["error"]
