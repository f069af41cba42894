"""What GIS clients other than the one we test with find in our files: GeoPackage 1.2, an SLD beside the
QML in ``layer_styles``, layers named after the whole file stem, and RFC 7946 GeoJSON as GDAL writes it
(antimeridian splitting, right-hand winding, 7 decimals)."""

from __future__ import annotations

import json
import re
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyogrio
import pyproj
import pytest
import shapely
from rasterio.crs import CRS
from rasterio.transform import Affine

from serving.outputs.geo_output import OutputError, bridges_qml, bridges_sld, layer_name, write_detections

SLD = "http://www.opengis.net/sld"
SE = "http://www.opengis.net/se"
OGC = "http://www.opengis.net/ogc"
NS = {"sld": SLD, "se": SE, "ogc": OGC}
GPKG_APPLICATION_ID = 0x47504B47  # "GPKG"
UTM31 = CRS.from_epsg(32631)


def write(path: Path, boxes, *, transform: Affine, crs, scene: str = "scene-a.tif") -> Path:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    n = boxes.shape[0]
    return write_detections(path, boxes, np.linspace(0.9, 0.5, n), np.zeros(n, dtype=np.int64), np.arange(n),
                            transform=transform, crs=crs, scene=scene, model="hbdnet-r50")


def utm31(path: Path, n: int = 1) -> Path:
    return write(path, [[100, 100, 200, 20, 0.3]] * n, transform=Affine(0.5, 0, 500000, 0, -0.5, 5000000),
                 crs=UTM31)


# --- GeoPackage ---------------------------------------------------------------------------------------

def test_gpkg_is_version_1_2(tmp_path):
    out = utm31(tmp_path / "b.gpkg")
    with sqlite3.connect(out) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == GPKG_APPLICATION_ID
        assert db.execute("PRAGMA user_version").fetchone()[0] == 10200


def test_layer_styles_hold_an_sld_of_the_qml_style(tmp_path):
    out = utm31(tmp_path / "rotterdam_pan2_0.5m_harbour_bridges.gpkg")
    with sqlite3.connect(out) as db:
        (sld_text, qml_text, table), = db.execute("SELECT styleSLD, styleQML, f_table_name FROM layer_styles")
    assert table == "rotterdam_pan2_0.5m_harbour_bridges" and qml_text == bridges_qml()
    root = ET.fromstring(sld_text)
    assert root.tag == f"{{{SLD}}}StyledLayerDescriptor" and root.get("version") == "1.1.0"
    assert root.find("sld:NamedLayer/se:Name", NS).text == table
    rule = root.find("sld:NamedLayer/sld:UserStyle/se:FeatureTypeStyle/se:Rule", NS)
    assert rule is not None

    # The SLD says what the QML says: the outline colour and width, no fill, the score as the label.
    layer = ET.fromstring(bridges_qml()).find("./renderer-v2/symbols/symbol/layer")
    props = {p.get("k"): p.get("v") for p in layer.findall("prop")}
    r, g, b, _ = (int(v) for v in props["outline_color"].split(","))
    stroke = {p.get("name"): p.text for p in rule.findall("se:PolygonSymbolizer/se:Stroke/se:SvgParameter", NS)}
    assert stroke["stroke"] == f"#{r:02x}{g:02x}{b:02x}"
    assert float(stroke["stroke-width"]) * 0.28 == pytest.approx(float(props["outline_width"]), abs=0.02)
    assert props["style"] == "no" and rule.find("se:PolygonSymbolizer/se:Fill", NS) is None
    text = rule.find("se:TextSymbolizer", NS)
    assert text.find("se:Label//ogc:PropertyName", NS).text == "score"
    assert {p.get("name"): p.text for p in text.findall("se:Fill/se:SvgParameter", NS)}["fill"] == stroke["stroke"]

    # The shipped file is the stored one but for the layer name.
    assert ET.fromstring(bridges_sld()).find("sld:NamedLayer/se:Name", NS).text == "bridges"
    shipped = Path(__file__).resolve().parents[3] / "serving" / "outputs" / "styles" / "bridges.sld"
    assert shipped.read_text(encoding="utf-8") == bridges_sld()


# --- names --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".gpkg", ".fgb", ".geojson"])
def test_layer_is_named_after_the_whole_file_stem(tmp_path, suffix):
    out = utm31(tmp_path / f"rotterdam_pan2_0.5m_harbour_bridges{suffix}")
    assert layer_name(out) == "rotterdam_pan2_0.5m_harbour_bridges"
    assert pyogrio.list_layers(out)[0][0] == "rotterdam_pan2_0.5m_harbour_bridges"
    if suffix == ".geojson":
        assert json.loads(out.read_text())["name"] == "rotterdam_pan2_0.5m_harbour_bridges"


# --- GeoJSON through GDAL -----------------------------------------------------------------------------

def antimeridian_box(tmp_path: Path) -> tuple[Path, float, float]:
    """A 60 m x 10 m box in UTM 60S (EPSG:32760) centred on the 180th meridian at 16 degrees south."""
    utm60s = CRS.from_epsg(32760)
    x, y = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32760", always_xy=True).transform(180.0, -16.0)
    transform = Affine(0.5, 0.0, x - 500 * 0.5, 0.0, -0.5, y + 500 * 0.5)  # pixel (500, 500) on the meridian
    return write(tmp_path / "am.geojson", [[500, 500, 120, 20, 0.0]], transform=transform, crs=utm60s), x, y


def test_box_across_the_antimeridian_is_split_there(tmp_path):
    out, _, _ = antimeridian_box(tmp_path)
    (feature,) = json.loads(out.read_text())["features"]
    geometry = feature["geometry"]
    assert geometry["type"] == "MultiPolygon" and len(geometry["coordinates"]) == 2
    halves = [shapely.Polygon(part[0]) for part in geometry["coordinates"]]
    west, east = sorted(halves, key=lambda p: p.bounds[0])
    assert west.bounds[0] == -180.0 and west.bounds[2] < -179.999  # the half east of the line, at -180
    assert east.bounds[2] == 180.0 and east.bounds[0] > 179.999
    for half in halves:  # each a sliver of about 30 m, not a ring around the globe
        assert half.bounds[2] - half.bounds[0] < 0.001 and half.is_valid
        assert shapely.is_ccw(half.exterior)
        assert -16.001 < half.bounds[1] < half.bounds[3] < -15.999
    # Both halves together measure the box: 60 m x 10 m.
    geod = pyproj.Geod(ellps="WGS84")
    area = sum(abs(geod.geometry_area_perimeter(h)[0]) for h in halves)
    assert area == pytest.approx(600.0, rel=0.01)


def test_geojson_is_written_by_gdal_with_seven_decimals_and_right_hand_rings(tmp_path):
    rotated = Affine.translation(500000, 5000000) @ Affine.rotation(30) @ Affine.scale(0.5, -0.5)
    boxes = [[100, 100, 200, 20, 0.0], [400, 300, 80, 30, 1.0], [50, 700, 40, 10, -1.5]]
    out = write(tmp_path / "b.geojson", boxes, transform=rotated, crs=UTM31)
    assert pyogrio.read_info(out)["driver"] == "GeoJSON"
    text = out.read_text()
    coordinates = re.findall(r"\[\s*(-?[\d.]+),\s*(-?[\d.]+)\s*\]", text)  # as written, before any parsing
    assert len(coordinates) == 3 * 5
    assert max(len(number.partition(".")[2]) for pair in coordinates for number in pair) == 7  # about 1 cm
    doc = json.loads(text)
    assert "crs" not in doc
    for feature in doc["features"]:
        (ring,) = feature["geometry"]["coordinates"]
        assert shapely.is_ccw(shapely.linearrings(ring))
        for lon, lat in ring:
            assert round(lon, 7) == lon and round(lat, 7) == lat
        assert feature["properties"]["scene"] == "scene-a.tif"


def test_geojson_write_is_atomic_and_refuses_what_cannot_be_lonlat(tmp_path):
    site = CRS.from_wkt('LOCAL_CS["site grid",LOCAL_DATUM["site",32767],UNIT["metre",1],'
                        'AXIS["X",EAST],AXIS["Y",NORTH]]')
    with pytest.raises(OutputError, match="cannot be reprojected to WGS84") as info:
        write(tmp_path / "b.geojson", [[1, 2, 30, 4, 0.0]], transform=Affine(1, 0, 0, 0, -1, 0), crs=site)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
    out = utm31(tmp_path / "b.geojson", n=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.geojson", "b.qml"]  # no temporary file left
    assert len(json.loads(out.read_text())["features"]) == 2
