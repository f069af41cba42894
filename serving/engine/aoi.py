"""An area of interest: the part of a scene to search. Given as ``minx,miny,maxx,maxy[,CRS]`` (degrees
of WGS84 when no CRS is named) or as a vector file of polygons in any CRS (several polygons: their
union), reprojected to the scene and expressed in its pixel grid, where the plan keeps the windows
that meet it and the merge drops the bridges whose centre lies outside it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyproj
import shapely
import shapely.errors
import shapely.geometry
from affine import Affine

from serving.engine.gdal_errors import first_line

WGS84 = "EPSG:4326"


class AoiError(ValueError):
    """An area of interest (or another polygon layer: fine-tuning labels) that cannot be read or placed on
    the scene (one line)."""


@dataclass(frozen=True)
class AreaOfInterest:
    """Polygons (``geometry``, shapely) in ``crs`` (anything pyproj reads), and ``label``: how the user
    gave them, for notes and outputs."""

    geometry: shapely.Geometry
    crs: str
    label: str

    def in_pixels(self, crs: object | None, transform: Affine) -> shapely.Geometry:
        """The area in the pixel grid of a scene (column, row of its full resolution)."""
        if crs is None:
            raise AoiError("the scene has no CRS, so an area of interest cannot be placed on it")
        what = f"the area of interest {self.label}"
        return in_scene_pixels(np.array([self.geometry]), self.crs, crs, transform, what)[0]


def in_scene_pixels(geometries: np.ndarray, crs: str, scene_crs: object | None, transform: Affine,
                    what: str) -> np.ndarray:
    """Geometries in ``crs`` reprojected to a scene and expressed in its pixel grid (column, row of its
    full resolution), each made valid. ``what`` names them in errors."""
    if scene_crs is None:
        raise AoiError(f"the scene has no CRS, so {what} cannot be placed on it")
    to_scene = pyproj.Transformer.from_crs(pyproj.CRS.from_user_input(crs), pyproj.CRS.from_user_input(scene_crs),
                                           always_xy=True)
    # Edges densified first, so that a box in degrees keeps its curved outline in a projected CRS.
    span = max(np.ptp(np.asarray(shapely.total_bounds(geometries)).reshape(2, 2), axis=0))
    dense = shapely.segmentize(geometries, max(span / 64, 1e-9))
    projected = shapely.transform(dense, lambda xy: np.column_stack(to_scene.transform(xy[:, 0], xy[:, 1])))
    if not np.isfinite(shapely.get_coordinates(projected)).all():
        raise AoiError(f"{what} cannot be reprojected to the scene's CRS")
    inverse = ~transform
    return shapely.make_valid(shapely.transform(projected, lambda xy: np.column_stack(inverse @ (xy[:, 0], xy[:, 1]))))


def parse_aoi(text: str) -> AreaOfInterest:
    """``minx,miny,maxx,maxy[,CRS]`` or the path of a vector file of polygons; ``AoiError`` otherwise."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) in (4, 5) and all(_is_number(p) for p in parts[:4]):
        minx, miny, maxx, maxy = (float(p) for p in parts[:4])
        if not (minx < maxx and miny < maxy):
            raise AoiError(f"area of interest {text!r}: give minx,miny,maxx,maxy with min < max")
        crs = parts[4] if len(parts) == 5 else WGS84
        _check_crs(crs, text)
        label = f"{minx:.10g},{miny:.10g},{maxx:.10g},{maxy:.10g} ({crs})"
        return AreaOfInterest(shapely.box(minx, miny, maxx, maxy), crs, label)
    return read_aoi_file(Path(text))


def aoi_from_value(value: str | dict) -> AreaOfInterest:
    """An area given over the network: ``minx,miny,maxx,maxy[,CRS]`` or a GeoJSON Polygon or
    MultiPolygon (RFC 7946: WGS84 longitude, latitude), as a dict or its JSON text. Never a file: the
    server reads no path a client names. ``AoiError`` otherwise."""
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except ValueError:
            raise AoiError("aoi: not valid JSON") from None
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if len(parts) in (4, 5) and all(_is_number(p) for p in parts[:4]):
            return parse_aoi(value)
        raise AoiError(f"aoi: give minx,miny,maxx,maxy[,CRS] or a GeoJSON polygon, got {value[:100]!r}")
    if not isinstance(value, dict) or value.get("type") not in ("Polygon", "MultiPolygon"):
        raise AoiError("aoi: a GeoJSON geometry must be a Polygon or a MultiPolygon (WGS84 longitude, latitude)")
    try:
        geometry = shapely.geometry.shape(value)
    except (KeyError, TypeError, ValueError, IndexError, shapely.errors.ShapelyError) as exc:
        raise AoiError(f"aoi: not a valid GeoJSON {value['type']}: {first_line(exc)}") from None
    if geometry.is_empty or not np.isfinite(shapely.get_coordinates(geometry)).all():
        raise AoiError("aoi: the polygon is empty or has coordinates that are not numbers")
    return AreaOfInterest(shapely.make_valid(geometry), WGS84, f"a GeoJSON {value['type']} (WGS84)")


def read_aoi_file(path: Path) -> AreaOfInterest:
    """The union of the polygons of the first layer of a vector file (GeoPackage, GeoJSON, shapefile
    ...), in the file's CRS."""
    if not path.is_file():
        raise AoiError(f"area of interest {path}: no such file, and not minx,miny,maxx,maxy[,CRS] either")
    polygons, crs = read_polygon_layer(path, f"area of interest {path}")
    geometry = shapely.union_all(polygons)
    return AreaOfInterest(geometry, crs, f"{path.name} ({len(polygons)} polygon{'s' * (len(polygons) > 1)})")


def read_polygon_layer(path: Path, what: str) -> tuple[np.ndarray, str]:
    """The polygons of the first layer of a vector file, each made valid, and the layer's CRS.
    ``what`` starts each error (e.g. "labels corrected.gpkg")."""
    import pyogrio
    import pyogrio.errors

    if not path.is_file():
        raise AoiError(f"{what}: no such file")
    try:
        # The first layer that is not QGIS's style table: a GeoPackage hbdnet detect wrote holds both.
        layers = [name for name, _ in pyogrio.list_layers(path) if name != "layer_styles"]
        meta, _, wkb, _ = pyogrio.raw.read(path, layer=layers[0] if layers else None, read_geometry=True, columns=[])
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
        raise AoiError(f"{what}: not a vector file GDAL reads ({first_line(exc)})") from None
    shapes = [g for g in shapely.from_wkb(wkb) if g is not None and not g.is_empty] if wkb is not None else []
    polygons = [g for g in shapes if g.geom_type in ("Polygon", "MultiPolygon")]
    if not polygons:
        raise AoiError(f"{what}: it holds no polygon")
    if len(polygons) < len(shapes):
        raise AoiError(f"{what}: it holds lines or points besides polygons; give polygons only")
    if meta.get("crs") is None:
        raise AoiError(f"{what}: it has no CRS")
    return shapely.make_valid(np.array(polygons)), meta["crs"]


def windows_meeting(area_px: shapely.Geometry, boxes: np.ndarray) -> np.ndarray:
    """Which ``(N, 4)`` pixel boxes ``x0, y0, x1, y1`` meet the area (interiors that overlap)."""
    if len(boxes) == 0:
        return np.zeros(0, bool)
    shapely.prepare(area_px)
    cells = shapely.box(boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3])
    return shapely.intersects(area_px, cells) & ~shapely.touches(area_px, cells)


def centres_inside(area_px: shapely.Geometry, centres: np.ndarray) -> np.ndarray:
    """Which ``(N, 2)`` pixel points lie inside the area (or on its edge)."""
    if len(centres) == 0:
        return np.zeros(0, bool)
    shapely.prepare(area_px)
    return shapely.intersects(area_px, shapely.points(centres))


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _check_crs(crs: str, text: str) -> None:
    try:
        pyproj.CRS.from_user_input(crs)
    except pyproj.exceptions.CRSError:
        raise AoiError(f"area of interest {text!r}: unknown CRS {crs!r} (e.g. EPSG:4326)") from None
