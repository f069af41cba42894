"""Areas of interest (``serving.engine.aoi``): read from a box or a vector file in any CRS, placed on a
scene's pixel grid, and refused in one line when they cannot be; the plan leaves out the windows that
do not meet one and the merge drops the bridges centred outside it, counted (``hbdnet detect --aoi``:
``tests/serving/cli/test_cli_detect.py``)."""

from __future__ import annotations

import json

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
from affine import Affine
from pyproj import Transformer

from serving.detect import DetectOptions, detect
from serving.engine.aoi import AoiError, aoi_from_value, parse_aoi
from serving.engine.pools import PoolConfig
from serving.model_ref import model_ref
from serving.testing.simulate import PerfectSpec

UTM = "EPSG:32631"
TRANSFORM = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 5800000.0)  # 0.5 m, top-left at (500000, 5800000)


def write_scene(path, height=2000, width=3000):
    data = np.random.default_rng(0).integers(0, 200, (3, height, width)).astype("uint8")
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3, dtype="uint8", crs=UTM,
                       transform=TRANSFORM, tiled=True, blockxsize=256, blockysize=256) as ds:
        ds.write(data)
    return path


def test_a_box_in_degrees_lands_on_the_scene_where_its_corners_are():
    to_lonlat = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    (w, s), (e, n) = to_lonlat.transform(500250, 5799250), to_lonlat.transform(500750, 5799750)
    aoi = parse_aoi(f"{w},{s},{e},{n}")
    assert aoi.crs == "EPSG:4326" and aoi.label.endswith("(EPSG:4326)")
    x0, y0, x1, y1 = aoi.in_pixels(UTM, TRANSFORM).bounds
    # the box's corners, 250 to 750 m east and south of the scene's corner: pixels 500 to 1500 (0.5 m);
    # a box in degrees is not square in UTM, so its bounds reach a little beyond its corners
    assert x0 == pytest.approx(500, abs=6) and x1 == pytest.approx(1500, abs=6)
    assert y0 == pytest.approx(500, abs=6) and y1 == pytest.approx(1500, abs=6)


def test_a_box_in_the_scenes_crs_and_polygons_from_a_file_in_another():
    box = parse_aoi("500100,5799000,500600,5799900,EPSG:32631").in_pixels(UTM, TRANSFORM)
    assert box.bounds == pytest.approx((200, 200, 1200, 2000))


def test_a_file_of_polygons_in_another_crs(tmp_path):
    to_lonlat = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    squares = [shapely.box(500100, 5799800, 500200, 5799900), shapely.box(501000, 5799000, 501100, 5799100)]
    lonlat = [shapely.transform(sq, lambda xy: np.column_stack(to_lonlat.transform(xy[:, 0], xy[:, 1])))
              for sq in squares]
    path = tmp_path / "areas.gpkg"
    pyogrio.raw.write(path, shapely.to_wkb(lonlat), [], [], geometry_type="Polygon", crs="EPSG:4326")
    aoi = parse_aoi(str(path))
    assert aoi.label == "areas.gpkg (2 polygons)"
    area = aoi.in_pixels(UTM, TRANSFORM)
    assert area.geom_type == "MultiPolygon" and area.area == pytest.approx(2 * 200 * 200, rel=0.01)


@pytest.mark.parametrize(("text", "words"), [
    ("3,50,2,51", "min < max"),
    ("1,2,3,4,EPSG:999999", "unknown CRS"),
    ("nowhere.gpkg", "no such file"),
    ("1,2,3", "no such file, and not minx,miny,maxx,maxy"),
])
def test_bad_areas_are_one_line(text, words):
    with pytest.raises(AoiError, match=words):
        parse_aoi(text)


def test_a_file_with_lines_or_without_a_crs_is_refused(tmp_path):
    lines = tmp_path / "lines.geojson"
    lines.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}}]}))
    with pytest.raises(AoiError, match="holds no polygon"):
        parse_aoi(str(lines))
    text = tmp_path / "not_vector.txt"
    text.write_text("hello")
    with pytest.raises(AoiError, match="not a vector file"):
        parse_aoi(str(text))


def test_a_network_value_is_a_box_or_a_geojson_polygon_never_a_path():
    assert aoi_from_value("1,2,3,4").crs == "EPSG:4326"
    assert aoi_from_value(json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}))
    for bad in ("/etc/passwd", {"type": "Point", "coordinates": [0, 0]}, "{not json",
                {"type": "Polygon", "coordinates": [[[0, 0], [1, "x"], [1, 1], [0, 0]]]}):
        with pytest.raises(AoiError):
            aoi_from_value(bad)


def test_windows_outside_are_not_run_and_bridges_outside_are_dropped(tmp_path):
    """Three bridges: one in the west third (the area), one just east of it, one far east. Only the
    area and half a window around it are read (the scene cropped: ``serving.resolution``), so the far
    eastern bridge is never seen; the one beside the area is, and its box is dropped and counted."""
    truth = np.array([[500.0, 1000.0, 300.0, 16.0, 0.3], [1150.0, 900.0, 150.0, 16.0, 0.3],
                      [2500.0, 1000.0, 300.0, 16.0, -0.4]])
    scene = write_scene(tmp_path / "s.tif")
    model = model_ref(PerfectSpec(truth), window=512, overlap=100)
    seen: list[int] = []
    whole = detect(str(scene), model, pool_config=PoolConfig(workers=0), progress=lambda d, t: seen.append(t))
    assert len(whole.scores) == 3 and whole.outside_windows == 0 and whole.aoi is None
    all_windows = seen[-1]

    west = f"500000,5799000,500500,5800000,{UTM}"  # pixels 0-1000 in x: the west third
    seen.clear()
    result = detect(str(scene), model, DetectOptions(aoi=parse_aoi(west)), pool_config=PoolConfig(workers=0),
                    progress=lambda d, t: seen.append(t))
    assert result.resolution.crop == (0, 0, 1000 + 256, 2000)  # the area and half a 512 px window
    assert len(result.scores) == 1 and result.boxes[0, 0] == pytest.approx(500, abs=5)
    assert result.outside_bridges == 1 and result.aoi == parse_aoi(west).label
    assert seen[-1] == result.windows - result.outside_windows < all_windows  # only windows of the part ran

    beside = detect(str(scene), model, DetectOptions(aoi=parse_aoi(f"600000,5700000,600100,5700100,{UTM}")),
                    pool_config=PoolConfig(workers=0))
    assert len(beside.scores) == 0 and beside.outside_windows == beside.windows
    assert any("does not overlap" in n and "nothing was searched" in n for n in beside.notes)


def test_the_scene_outside_the_area_is_never_read(tmp_path):
    """The scene's eastern tiles are broken on disk (their compressed bytes overwritten): a run over the
    whole scene fails on them, a run over a western area of interest never reads them and succeeds."""
    scene = tmp_path / "broken.tif"
    data = np.random.default_rng(0).integers(0, 200, (3, 2000, 3000)).astype("uint8")
    with rasterio.open(scene, "w", driver="GTiff", width=3000, height=2000, count=3, dtype="uint8", crs=UTM,
                       transform=TRANSFORM, tiled=True, blockxsize=256, blockysize=256, compress="deflate") as ds:
        ds.write(data)
    with rasterio.open(scene) as ds:
        tiles = [(int(ds.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=1)),
                  int(ds.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=1)))
                 for r in range(8) for c in range(12) if c * 256 >= 2048]  # columns from 2048 on
    raw = bytearray(scene.read_bytes())
    for offset, size in tiles:
        raw[offset:offset + size] = b"\x07" * size
    scene.write_bytes(bytes(raw))
    model = model_ref(PerfectSpec(np.zeros((0, 5))), window=512, overlap=100)
    with pytest.raises(Exception):  # noqa: B017 - the whole scene reads the broken tiles, whatever GDAL raises
        detect(str(scene), model, pool_config=PoolConfig(workers=0))
    west = detect(str(scene), model, DetectOptions(aoi=parse_aoi(f"500000,5799000,500500,5800000,{UTM}")),
                  pool_config=PoolConfig(workers=0))
    assert west.resolution.crop == (0, 0, 1256, 2000) and west.windows > 0
