"""Geo outputs written to real files and read back with pyogrio, sqlite3 and json."""

from __future__ import annotations

import json
import math
import sqlite3
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.errors
import pyogrio.raw
import pyproj
import pytest
import shapely
from rasterio.crs import CRS
from rasterio.transform import Affine

from serving.outputs.geo_output import NoCRSWarning, OutputError, write_detections

UTM31 = CRS.from_epsg(32631)
WGS84 = CRS.from_epsg(4326)
CM_EASTING = 500000.0  # zone 31's central meridian (3 degrees E): no grid convergence there
NORTHING = 5000000.0
PX = 0.5  # metres per pixel
QGIS_LAYER_STYLES_COLUMNS = [
    "id",
    "f_table_catalog",
    "f_table_schema",
    "f_table_name",
    "f_geometry_column",
    "styleName",
    "styleQML",
    "styleSLD",
    "useAsDefault",
    "description",
    "owner",
    "ui",
    "update_time",
]
FIELDS = [
    "score",
    "class",
    "length_m",
    "width_m",
    "bearing_deg",
    "angle_px",
    "cx_px",
    "cy_px",
    "level",
    "model",
    "scene",
]


def utm_transform(col: float, row: float, easting: float = CM_EASTING) -> Affine:
    """North-up 0.5 m transform that puts scene pixel (col, row) at (easting, NORTHING)."""
    return Affine(PX, 0.0, easting - PX * col, 0.0, -PX, NORTHING + PX * row)


def write(path: Path, boxes, *, transform: Affine, crs, scores=None, labels=None, levels=None, **kw) -> Path:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    n = boxes.shape[0]
    return write_detections(
        path,
        boxes,
        np.linspace(0.9, 0.5, n) if scores is None else scores,
        np.zeros(n, dtype=np.int64) if labels is None else labels,
        np.arange(n) if levels is None else levels,
        transform=transform,
        crs=crs,
        scene="scene-a.tif",
        model="hbdnet-r50",
        **kw,
    )


def read_layer(path: Path) -> tuple[dict, list[shapely.Polygon], dict[str, np.ndarray]]:
    layer = path.stem if path.suffix == ".gpkg" else None
    meta, _, wkb, values = pyogrio.raw.read(path, layer=layer)
    return meta, list(shapely.from_wkb(wkb)), dict(zip(meta["fields"], values, strict=True))


def read_geojson(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def to_lonlat(crs: CRS, x: float, y: float) -> tuple[float, float]:
    t = pyproj.Transformer.from_crs(pyproj.CRS.from_wkt(crs.to_wkt()), "EPSG:4326", always_xy=True)
    return t.transform(x, y)


def utm_scale(easting: float, northing: float) -> float:
    """Point scale factor of UTM 31N (conformal: the same in every direction)."""
    lon, lat = to_lonlat(UTM31, easting, northing)
    return pyproj.Proj("EPSG:32631").get_factors(lon, lat).meridional_scale


def axis_diff(a: float, b: float) -> float:
    """Distance between two undirected bearings in degrees."""
    d = abs(a - b) % 180.0
    return min(d, 180.0 - d)


# --- positions and rings ------------------------------------------------------------------


def test_geojson_puts_the_bridge_where_pyproj_says(tmp_path):
    cx, cy = 1234.0, 567.0
    # The map position of the box centre, from the transform written out by hand.
    easting, northing = 501000.0, 4990000.0
    transform = Affine(PX, 0.0, easting - PX * cx, 0.0, -PX, northing + PX * cy)
    out = write(tmp_path / "b.geojson", [[cx, cy, 200, 20, 0.3]], transform=transform, crs=UTM31)
    fc = read_geojson(out)
    ring = np.array(fc["features"][0]["geometry"]["coordinates"][0])
    lon, lat = to_lonlat(UTM31, easting, northing)
    # The centre of a (mapped) rectangle is the mean of its 4 corners; over 100 m the map
    # projection's curvature moves it by far less than 1e-6 degree.
    assert ring[:4].mean(axis=0) == pytest.approx([lon, lat], abs=1e-6)


def test_geojson_is_rfc7946(tmp_path):
    boxes = [[100, 100, 200, 20, 0.0], [400, 300, 80, 30, 1.0], [50, 700, 40, 10, -1.2]]
    out = write(tmp_path / "b.geojson", boxes, transform=utm_transform(0, 0), crs=UTM31)
    fc = read_geojson(out)
    assert fc["type"] == "FeatureCollection"
    assert "crs" not in fc
    assert len(fc["features"]) == 3
    for feature in fc["features"]:
        assert feature["type"] == "Feature"
        assert feature["geometry"]["type"] == "Polygon"
        (ring,) = feature["geometry"]["coordinates"]
        assert len(ring) == 5 and ring[0] == ring[-1]
        for lon, lat in ring:
            assert -180 <= lon <= 180 and -90 <= lat <= 90
            assert round(lon, 7) == lon and round(lat, 7) == lat
        assert set(feature["properties"]) == set(FIELDS)
    # GDAL reads it as WGS84 with the same features.
    info = pyogrio.read_info(out)
    assert info["crs"] == "EPSG:4326" and info["features"] == 3


@pytest.mark.parametrize(
    "transform",
    [
        utm_transform(0, 0),  # north-up: the y flip turns the pixel winding around
        Affine(PX, 0.0, CM_EASTING, 0.0, PX, NORTHING),  # south-up: no flip
        Affine.translation(CM_EASTING, NORTHING) @ Affine.rotation(30) @ Affine.scale(PX, -PX),
    ],
    ids=["north-up", "south-up", "rotated"],
)
@pytest.mark.parametrize("suffix", [".geojson", ".gpkg", ".fgb"])
def test_exterior_rings_are_counter_clockwise(tmp_path, transform, suffix):
    boxes = [[100, 100, 200, 20, 0.0], [400, 300, 80, 30, 1.0], [50, 700, 40, 10, -1.5]]
    out = write(tmp_path / f"b{suffix}", boxes, transform=transform, crs=UTM31)
    if suffix == ".geojson":
        rings = [f["geometry"]["coordinates"][0] for f in read_geojson(out)["features"]]
    else:
        rings = [shapely.get_coordinates(p.exterior) for p in read_layer(out)[1]]
    assert len(rings) == 3
    for ring in rings:
        assert shapely.is_ccw(shapely.linearrings(ring))


def test_rotated_transform_maps_corners_through_the_affine(tmp_path):
    transform = Affine.translation(CM_EASTING, NORTHING) @ Affine.rotation(30) @ Affine.scale(PX, -PX)
    box = [100.0, 50.0, 200.0, 20.0, 0.0]
    out = write(tmp_path / "b.gpkg", [box], transform=transform, crs=UTM31)
    _, (poly,), _ = read_layer(out)
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
    corners_px = [(0, 40), (200, 40), (200, 60), (0, 60)]
    expected = {(round(a * x + b * y + c, 6), round(d * x + e * y + f, 6)) for x, y in corners_px}
    got = {(round(x, 6), round(y, 6)) for x, y in shapely.get_coordinates(poly)[:4]}
    assert got == expected


# --- measurements -------------------------------------------------------------------------


def test_length_and_width_in_a_projected_crs(tmp_path):
    out = write(
        tmp_path / "b.gpkg", [[1000, 1000, 200, 20, 0.0]], transform=utm_transform(1000, 1000), crs=UTM31
    )
    _, _, fields = read_layer(out)
    k = utm_scale(CM_EASTING, NORTHING)  # 0.9996 on the central meridian
    # Ground metres are grid metres divided by the point scale factor.
    assert fields["length_m"][0] == pytest.approx(100.0 / k, rel=1e-6)
    assert fields["width_m"][0] == pytest.approx(10.0 / k, rel=1e-6)
    assert fields["length_m"][0] == pytest.approx(100.0, rel=1e-3)


def test_length_width_and_bearing_in_a_geographic_crs(tmp_path):
    lon0, lat0, step = 10.0, 45.0, 1e-5
    transform = Affine(step, 0.0, lon0, 0.0, -step, lat0)
    cx, cy = 500.0, 300.0
    out = write(tmp_path / "b.gpkg", [[cx, cy, 200, 20, 0.0]], transform=transform, crs=WGS84)
    _, (poly,), fields = read_layer(out)
    geod = pyproj.Geod(ellps="WGS84")
    lat = lat0 - step * cy
    west, east = lon0 + step * (cx - 100), lon0 + step * (cx + 100)
    az_west, _, length = geod.inv(west, lat, east, lat)
    # The bearing is the azimuth of the geodesic between the two ends, taken at its middle.
    _, _, back = geod.fwd(west, lat, az_west, length / 2)
    az = back + 180.0
    _, _, width = geod.inv(
        lon0 + step * cx, lat0 - step * (cy - 10), lon0 + step * cx, lat0 - step * (cy + 10)
    )
    assert fields["length_m"][0] == pytest.approx(length, rel=1e-9)
    assert fields["width_m"][0] == pytest.approx(width, rel=1e-9)
    assert length == pytest.approx(200 * step * 111320 * math.cos(math.radians(lat)), rel=5e-3)
    assert axis_diff(fields["bearing_deg"][0], az) < 1e-7
    assert axis_diff(fields["bearing_deg"][0], 90.0) < 1e-9  # by symmetry about the middle
    assert info_crs(out) == "EPSG:4326"
    # x is longitude in the stored geometry, whatever EPSG:4326's official axis order says.
    assert poly.centroid.x == pytest.approx(lon0 + step * cx, abs=1e-9)
    assert poly.centroid.y == pytest.approx(lat, abs=1e-9)


def info_crs(path: Path) -> str | None:
    return pyogrio.read_info(path, layer=path.stem if path.suffix == ".gpkg" else None)["crs"]


@pytest.mark.parametrize(
    ("theta", "bearing"),
    [(0.0, 90.0), (-math.pi / 2, 0.0), (-math.pi / 4, 45.0), (math.pi / 4, 135.0), (math.pi / 3, 150.0)],
)
def test_bearing_on_the_central_meridian(tmp_path, theta, bearing):
    # Box centred on the central meridian: grid north is true north there.
    out = write(
        tmp_path / "b.geojson", [[1000, 1000, 200, 20, theta]], transform=utm_transform(1000, 1000), crs=UTM31
    )
    props = read_geojson(out)["features"][0]["properties"]
    assert 0.0 <= props["bearing_deg"] < 180.0
    assert axis_diff(props["bearing_deg"], bearing) < 1e-4
    assert props["angle_px"] == pytest.approx(math.degrees(theta))


def test_bearing_off_the_meridian_includes_grid_convergence(tmp_path):
    easting = CM_EASTING + 30000.0
    out = write(
        tmp_path / "b.gpkg",
        [[1000, 1000, 200, 20, -math.pi / 2]],
        transform=utm_transform(1000, 1000, easting),
        crs=UTM31,
    )
    _, _, fields = read_layer(out)
    lon, lat = to_lonlat(UTM31, easting, NORTHING)
    gamma = pyproj.Proj("EPSG:32631").get_factors(lon, lat).meridian_convergence
    # East of the central meridian in the north, grid north lies clockwise of true north.
    assert 0.2 < gamma < 0.4
    assert axis_diff(fields["bearing_deg"][0], gamma) < 1e-3


def test_rotated_transform_bearing_and_length(tmp_path):
    # Pixel +x points 30 degrees north of east on the map: bearing 60 degrees.
    transform = Affine.translation(CM_EASTING, NORTHING) @ Affine.rotation(30) @ Affine.scale(PX, -PX)
    out = write(
        tmp_path / "b.fgb",
        [[100, 50, 200, 20, 0.0], [100, 50, 200, 20, -math.pi / 2]],
        transform=transform,
        crs=UTM31,
    )
    _, _, fields = read_layer(out)
    k = utm_scale(CM_EASTING, NORTHING)
    assert fields["length_m"] == pytest.approx([100.0 / k] * 2, rel=1e-5)
    assert fields["width_m"] == pytest.approx([10.0 / k] * 2, rel=1e-5)
    # Within 100 m of the central meridian the convergence is under 0.001 degree.
    assert axis_diff(fields["bearing_deg"][0], 60.0) < 2e-3
    assert axis_diff(fields["bearing_deg"][1], 150.0) < 2e-3


def test_non_square_pixels_measure_on_the_ground(tmp_path):
    # 0.5 m wide, 2 m tall pixels: a 100 x 60 px box lying along the rows is 50 m x 120 m on the
    # ground, so its long ground axis is the pixel box's short one, pointing north.
    transform = Affine(0.5, 0.0, CM_EASTING - 0.5 * 500, 0.0, -2.0, NORTHING + 2.0 * 500)
    out = write(tmp_path / "b.gpkg", [[500, 500, 100, 60, 0.0]], transform=transform, crs=UTM31)
    _, _, fields = read_layer(out)
    k = utm_scale(CM_EASTING, NORTHING)
    assert fields["length_m"][0] == pytest.approx(120.0 / k, rel=1e-6)
    assert fields["width_m"][0] == pytest.approx(50.0 / k, rel=1e-6)
    assert axis_diff(fields["bearing_deg"][0], 0.0) < 1e-4
    assert fields["angle_px"][0] == pytest.approx(0.0)


def test_engineering_crs_measures_in_its_grid_unit(tmp_path):
    # A site grid in feet cannot be placed on the earth: lengths come from its unit, no bearing.
    site = CRS.from_wkt(
        'LOCAL_CS["site grid",LOCAL_DATUM["site",32767],UNIT["foot",0.3048],AXIS["X",EAST],AXIS["Y",NORTH]]'
    )
    out = write(
        tmp_path / "b.gpkg", [[100, 100, 200, 20, 0.0]], transform=Affine(1, 0, 0, 0, -1, 0), crs=site
    )
    _, _, fields = read_layer(out)
    assert fields["length_m"][0] == pytest.approx(200 * 0.3048)
    assert fields["width_m"][0] == pytest.approx(20 * 0.3048)
    assert np.isnan(fields["bearing_deg"][0])


def test_geojson_longitudes_of_a_0_to_360_grid_are_wrapped(tmp_path):
    transform = Affine(1e-5, 0.0, 200.0, 0.0, -1e-5, 10.0)
    out = write(tmp_path / "b.geojson", [[500, 500, 200, 20, 0.0]], transform=transform, crs=WGS84)
    ring = np.array(read_geojson(out)["features"][0]["geometry"]["coordinates"][0])
    assert ring[:4].mean(axis=0) == pytest.approx([200.005 - 360.0, 9.995], abs=1e-7)


def test_attributes_round_trip(tmp_path):
    boxes = [[10, 20, 30, 40, 0.1], [50, 60, 70, 8, -0.7]]  # the first is not le90: w < h
    out = write(
        tmp_path / "b.fgb",
        boxes,
        transform=utm_transform(0, 0),
        crs=UTM31,
        scores=np.array([0.75, 0.5], dtype=np.float32),
        labels=np.array([1, 0]),
        levels=np.array([2, 0]),
        class_names=("bridge", "viaduct"),
    )
    meta, _, fields = read_layer(out)
    assert list(meta["fields"]) == FIELDS
    # FlatGeobuf's spatial index stores features in Hilbert order; put them back in input order.
    order = np.argsort(fields["cx_px"])
    fields = {name: values[order] for name, values in fields.items()}
    assert fields["score"] == pytest.approx([0.75, 0.5])
    assert list(fields["class"]) == ["viaduct", "bridge"]
    assert list(fields["level"]) == [2, 0]
    assert list(fields["model"]) == ["hbdnet-r50"] * 2
    assert list(fields["scene"]) == ["scene-a.tif"] * 2
    assert list(fields["cx_px"]) == [10, 50] and list(fields["cy_px"]) == [20, 60]
    # Rewritten in le90: the 30 x 40 box at 0.1 rad is a 40 x 30 box at 0.1 + pi/2 - pi.
    assert fields["angle_px"] == pytest.approx(
        [math.degrees(0.1 + math.pi / 2 - math.pi), math.degrees(-0.7)]
    )
    assert fields["length_m"][0] > fields["width_m"][0]


# --- formats ------------------------------------------------------------------------------


def test_gpkg_has_the_crs_and_a_default_qgis_style(tmp_path):
    out = write(tmp_path / "b.gpkg", [[100, 100, 200, 20, 0.0]], transform=utm_transform(0, 0), crs=UTM31)
    assert [name for name, _ in pyogrio.list_layers(out)] == ["b", "layer_styles"]  # the layer is named after the file
    info = pyogrio.read_info(out, layer="b")
    assert info["crs"] == "EPSG:32631"
    assert info["features"] == 1
    with sqlite3.connect(out) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(layer_styles)")]
        assert columns == QGIS_LAYER_STYLES_COLUMNS
        rows = db.execute(
            "SELECT f_table_name, f_geometry_column, useAsDefault, styleQML, update_time FROM layer_styles"
        ).fetchall()
        contents = dict(db.execute("SELECT table_name, data_type FROM gpkg_contents").fetchall())
    assert len(rows) == 1
    table, geom_column, default, qml, updated = rows[0]
    assert (table, default) == ("b", 1)
    assert geom_column == info["geometry_name"]
    assert ET.fromstring(qml).tag == "qgis"
    assert updated.endswith("Z")
    # QGIS's OGR provider finds the styles table only when it is registered in gpkg_contents.
    assert contents == {"b": "features", "layer_styles": "attributes"}
    assert (tmp_path / "b.qml").read_text(encoding="utf-8") == qml


def test_fgb_has_the_crs(tmp_path):
    out = write(tmp_path / "b.fgb", [[100, 100, 200, 20, 0.0]] * 2, transform=utm_transform(0, 0), crs=UTM31)
    info = pyogrio.read_info(out)
    assert info["crs"] == "EPSG:32631"
    assert info["driver"] == "FlatGeobuf"
    meta, polys, _ = read_layer(out)
    assert len(polys) == 2 and meta["geometry_type"] == "Polygon"


@pytest.mark.parametrize("suffix", [".geojson", ".gpkg", ".fgb"])
def test_qml_style_beside_the_output(tmp_path, suffix):
    out = write(
        tmp_path / f"bridges_out{suffix}",
        [[100, 100, 200, 20, 0.0]],
        transform=utm_transform(0, 0),
        crs=UTM31,
    )
    qml = tmp_path / "bridges_out.qml"
    root = ET.parse(qml).getroot()
    assert root.tag == "qgis" and root.get("version", "").startswith("3.")
    layer = root.find("./renderer-v2/symbols/symbol/layer")
    assert layer is not None and layer.get("class") == "SimpleFill"
    props = {p.get("k"): p.get("v") for p in layer.findall("prop")}
    assert props["style"] == "no" and props["outline_width"] == "0.6" and props["outline_width_unit"] == "MM"
    text_style = root.find("./labeling/settings/text-style")
    assert text_style is not None and '"score"' in text_style.get("fieldName", "")
    assert out.exists()


def test_write_style_false_writes_no_style(tmp_path):
    out = write(
        tmp_path / "b.gpkg",
        [[100, 100, 200, 20, 0.0]],
        transform=utm_transform(0, 0),
        crs=UTM31,
        write_style=False,
    )
    assert not (tmp_path / "b.qml").exists()
    assert [name for name, _ in pyogrio.list_layers(out)] == ["b"]


@pytest.mark.parametrize("suffix", [".geojson", ".gpkg", ".fgb"])
def test_zero_detections_give_a_valid_empty_layer(tmp_path, suffix):
    out = write(tmp_path / f"b{suffix}", np.zeros((0, 5)), transform=utm_transform(0, 0), crs=UTM31)
    if suffix == ".geojson":
        fc = read_geojson(out)
        assert fc["type"] == "FeatureCollection" and fc["features"] == [] and "crs" not in fc
    else:
        meta, polys, fields = read_layer(out)
        assert polys == []
        assert list(meta["fields"]) == FIELDS
        assert meta["geometry_type"] == "Polygon"
        assert meta["crs"] == "EPSG:32631"
        assert all(len(v) == 0 for v in fields.values())


def test_rewriting_replaces_the_previous_output(tmp_path):
    path = tmp_path / "b.gpkg"
    write(path, [[100, 100, 200, 20, 0.0]] * 3, transform=utm_transform(0, 0), crs=UTM31)
    write(path, [[100, 100, 200, 20, 0.0]], transform=utm_transform(0, 0), crs=UTM31)
    assert pyogrio.read_info(path, layer="b")["features"] == 1
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM layer_styles").fetchone() == (1,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.gpkg", "b.qml"]


# --- scenes without a CRS -----------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".gpkg", ".fgb"])
def test_no_crs_writes_pixel_coordinates_as_qgis_draws_them(tmp_path, suffix):
    box = [100.0, 50.0, 40.0, 10.0, 0.0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = write(tmp_path / f"b{suffix}", [box], transform=Affine.identity(), crs=None)
    assert [w.category for w in caught] == [NoCRSWarning]
    assert "pixel coordinates" in str(caught[0].message)
    meta, (poly,), fields = read_layer(out)
    assert meta["crs"] is None
    # QGIS draws a raster without georeferencing with geotransform (0, 1, 0, 0, 0, -1).
    assert poly.bounds == pytest.approx((80.0, -55.0, 120.0, -45.0))
    assert (
        np.isnan(fields["length_m"][0])
        and np.isnan(fields["width_m"][0])
        and np.isnan(fields["bearing_deg"][0])
    )
    assert fields["cx_px"][0] == 100.0


def test_no_crs_with_a_transform_uses_the_transform(tmp_path):
    transform = Affine(2.0, 0.0, 1000.0, 0.0, -2.0, 5000.0)
    with pytest.warns(NoCRSWarning):
        out = write(tmp_path / "b.gpkg", [[100.0, 50.0, 40.0, 10.0, 0.0]], transform=transform, crs=None)
    _, (poly,), _ = read_layer(out)
    assert poly.bounds == pytest.approx((1160.0, 4890.0, 1240.0, 4910.0))


def test_no_crs_geojson_is_refused(tmp_path):
    with pytest.raises(OutputError, match=r"no CRS.*\.gpkg"):
        write(tmp_path / "b.geojson", [[100, 50, 40, 10, 0.0]], transform=Affine.identity(), crs=None)
    assert list(tmp_path.iterdir()) == []


# --- errors -------------------------------------------------------------------------------


def test_unknown_extension(tmp_path):
    with pytest.raises(OutputError, match=r"\.shp") as info:
        write(tmp_path / "b.shp", [[100, 50, 40, 10, 0.0]], transform=utm_transform(0, 0), crs=UTM31)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["missing-folder", "under-a-file", "is-a-folder"])
def test_unwritable_paths(tmp_path, case):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "folder.gpkg").mkdir()
    path = {
        "missing-folder": tmp_path / "nope" / "b.gpkg",
        "under-a-file": tmp_path / "file.txt" / "b.gpkg",
        "is-a-folder": tmp_path / "folder.gpkg",
    }[case]
    with pytest.raises(OutputError, match="cannot write") as info:
        write(path, [[100, 50, 40, 10, 0.0]], transform=utm_transform(0, 0), crs=UTM31)
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder.gpkg"]


def test_unwritable_folder_whoever_runs_it(tmp_path):
    # Independent of the user (CI runs as root, who writes through permission bits): a "folder" that
    # is a regular file, and, on Linux, /proc, where nobody can create a file.
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(OutputError, match=r"file\.txt is a file, not a folder") as info:
        write(a_file / "sub" / "b.fgb", [[100, 50, 40, 10, 0.0]], transform=utm_transform(0, 0), crs=UTM31)
    assert "\n" not in str(info.value) and ".partial" not in str(info.value)
    if Path("/proc/self").is_dir():
        with pytest.raises(OutputError, match="folder /proc is not writable") as info:
            write(Path("/proc/hbdnet_b.fgb"), [[100, 50, 40, 10, 0.0]], transform=utm_transform(0, 0), crs=UTM31)
        assert "\n" not in str(info.value) and ".partial" not in str(info.value)


def test_a_failed_write_names_the_output_not_the_temporary_file(tmp_path, monkeypatch):
    def fail(path, *args, **kwargs):
        raise pyogrio.errors.DataSourceError(f"{path}: No space left on device")

    monkeypatch.setattr(pyogrio.raw, "write", fail)
    with pytest.raises(OutputError) as info:
        write(tmp_path / "b.gpkg", [[100, 50, 40, 10, 0.0]], transform=utm_transform(0, 0), crs=UTM31)
    assert str(info.value) == f"cannot write {tmp_path / 'b.gpkg'}: {tmp_path / 'b.gpkg'}: No space left on device"
    assert list(tmp_path.iterdir()) == []


def test_inconsistent_arrays_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="scores"):
        write(
            tmp_path / "b.gpkg",
            [[1, 2, 3, 4, 0.0]],
            transform=utm_transform(0, 0),
            crs=UTM31,
            scores=[0.1, 0.2],
        )
    with pytest.raises(ValueError, match="class_names"):
        write(
            tmp_path / "b.gpkg",
            [[1, 2, 3, 4, 0.0]],
            transform=utm_transform(0, 0),
            crs=UTM31,
            labels=np.array([1]),
        )


@pytest.mark.parametrize(("crs", "transform", "across", "down"), [
    # UTM 31N at its central meridian: 0.5 m pixels, times the projection's scale factor 0.9996
    ("EPSG:32631", Affine(0.5, 0, 500000.0 - 500, 0, -0.5, 5800000.0 + 500), 0.4998, 0.4998),
    # degrees at 52 N: a hundred-thousandth of a degree is 0.687 m across and 1.113 m down
    ("EPSG:4326", Affine(1e-5, 0, 3.0, 0, -1e-5, 52.0), 0.6869, 1.1130),
    # US survey feet (Oregon South, the Autzen sample's CRS family): 1 ft pixels
    ("EPSG:2994", Affine(1.0, 0, 4000000.0, 0, -1.0, 900000.0), 0.3048, 0.3048),
])
def test_ground_sample_distance_from_projected_and_geographic_crss(crs, transform, across, down):
    from serving.outputs.geometry_attrs import ground_sample_distance

    got = ground_sample_distance(transform, crs, 2000, 2000)
    assert got == pytest.approx((across, down), rel=2e-3)


def test_no_ground_sample_distance_without_a_crs():
    from serving.outputs.geometry_attrs import ground_sample_distance

    assert ground_sample_distance(Affine(0.5, 0, 0, 0, -0.5, 0), None, 100, 100) is None
