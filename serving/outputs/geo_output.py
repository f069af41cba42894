"""Bridge detections as files QGIS users open directly: GeoJSON, GeoPackage, FlatGeobuf, QML style.

One polygon per bridge (its oriented rectangle, corners mapped through the scene's affine
transform) with the attributes ``score, class, length_m, width_m, bearing_deg, angle_px, cx_px,
cy_px, level, model, scene``. The format follows the file extension:

* ``.geojson``: RFC 7946, WGS84 longitude/latitude (reprojected with pyproj), counter-clockwise
  exterior rings, no ``crs`` member, 7 decimals (about 1 cm).
* ``.gpkg``: the scene's CRS, layer ``bridges``, the QGIS style stored in the ``layer_styles``
  table the way QGIS stores it, as the layer's default, so the layer opens styled.
* ``.fgb``: FlatGeobuf in the scene's CRS.

A ``.qml`` style with the same base name is written beside each of them (``write_style``).

A scene without a CRS is written in the frame QGIS uses to draw such a raster, so the boxes
overlay it (see :func:`serving.outputs.geometry_attrs.map_frame`), with a :class:`NoCRSWarning` and null
measurements. GeoJSON refuses such a scene: RFC 7946 coordinates are WGS84 longitude/latitude by
definition, and a file that says so while holding pixels would put the bridges in the wrong place
in every viewer. Use ``.gpkg`` or ``.fgb`` for those scenes.

Files are written under a temporary name in the target folder and renamed into place, so a
failed write never leaves a half-written output behind.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pyogrio.errors
import pyogrio.raw
import shapely
from rasterio.transform import Affine

from serving.outputs.geometry_attrs import (
    BridgeGeometry,
    MapFrame,
    box_geometry,
    lonlat_transformer,
    map_frame,
    to_lonlat,
    to_pyproj_crs,
)

LAYER_NAME = "bridges"
GEOMETRY_COLUMN = "geom"
GEOJSON_DECIMALS = 7  # 1e-7 degree is about 1 cm on the ground
SUPPORTED_SUFFIXES = (".geojson", ".gpkg", ".fgb")
_GDAL_ERRORS = (
    pyogrio.errors.DataSourceError,
    pyogrio.errors.DataLayerError,
    pyogrio.errors.FieldError,
    pyogrio.errors.FeatureError,
    pyogrio.errors.GeometryError,
    pyogrio.errors.CRSError,
)


class OutputError(ValueError):
    """An output that cannot be written; the message is one line, fit for a CLI to print."""


class NoCRSWarning(UserWarning):
    """The scene has no CRS, so the output is in pixel coordinates and has no ground measurements."""


@dataclass(frozen=True)
class Detections:
    """The rows to write, validated: N boxes in scene pixels and their per-box values."""

    boxes: np.ndarray  # (N, 5) float64 (cx, cy, w, h, theta)
    scores: np.ndarray  # (N,) float64
    labels: np.ndarray  # (N,) int64, index into class_names
    levels: np.ndarray  # (N,) int64, pyramid level that produced the box


def bridges_qml() -> str:
    """The QGIS style shipped with the package (``serving/outputs/styles/bridges.qml``)."""
    return resources.files("serving.outputs").joinpath("styles", "bridges.qml").read_text(encoding="utf-8")


def write_detections(
    path: Path | str,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    levels: np.ndarray,
    *,
    transform: Affine,
    crs: object | None,
    scene: str,
    model: str,
    class_names: Sequence[str] = ("bridge",),
    write_style: bool = True,
) -> Path:
    """Write detections to ``path`` in the format its extension names; return ``path``.

    ``boxes`` are ``(N, 5)`` rows ``(cx, cy, w, h, theta)`` in full-resolution scene pixels;
    ``transform`` and ``crs`` are the scene's (rasterio ``Affine`` and ``CRS``; ``crs`` may be
    None). Raises :class:`OutputError` for an unknown extension or a path that cannot be written,
    and ``ValueError`` for inconsistent arrays.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    check_output_path(path)
    dets = _validate(boxes, scores, labels, levels, len(class_names))
    pcrs = to_pyproj_crs(crs)
    if pcrs is None:
        if suffix == ".geojson":
            raise OutputError(
                f"cannot write {path}: scene {scene!r} has no CRS and GeoJSON (RFC 7946) must be "
                "WGS84 longitude/latitude; write .gpkg or .fgb to get pixel coordinates"
            )
        warnings.warn(
            f"scene {scene!r} has no CRS: {path.name} is in pixel coordinates "
            "(x = column, y = -row, as QGIS draws a raster without georeferencing), "
            "with no CRS and null length_m, width_m and bearing_deg",
            NoCRSWarning,
            stacklevel=2,
        )
    frame = map_frame(transform, pcrs)
    geometry = box_geometry(dets.boxes, frame)
    columns = _attribute_columns(geometry, dets, class_names, scene=scene, model=model)
    qml = bridges_qml()

    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.partial{suffix}")
    try:
        if suffix == ".geojson":
            _write_geojson(tmp, geometry, frame, columns)
        elif suffix == ".gpkg":
            _write_ogr(
                tmp, "GPKG", geometry, frame, columns, description=f"HBD-Net bridges in {scene} ({model})"
            )
            if write_style:
                _embed_qgis_style(tmp, qml)
        else:
            _write_ogr(tmp, "FlatGeobuf", geometry, frame, columns, description=None)
        os.replace(tmp, path)
        if write_style:
            path.with_suffix(".qml").write_text(qml, encoding="utf-8")
    except (OSError, *_GDAL_ERRORS) as exc:
        raise OutputError(f"cannot write {path}: {_one_line(exc)}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def check_output_path(path: Path) -> None:
    """Refuse early, with a plain reason, what would otherwise fail deep inside GDAL: an unknown
    extension, a missing or read-only folder, a folder in the file's place."""
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise OutputError(f"cannot write {path}: unknown output format {path.suffix or '(no extension)'!r}; "
                          f"use one of {', '.join(SUPPORTED_SUFFIXES)}")
    parent = path.parent
    if not parent.is_dir():  # missing, or a file where the folder should be
        raise OutputError(f"cannot write {path}: folder {parent} does not exist")
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: folder {parent} is not writable")


def _validate(boxes, scores, labels, levels, num_classes: int) -> Detections:
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        b = b.reshape(0, 5)
    if b.ndim != 2 or b.shape[1] != 5:
        raise ValueError(f"boxes must be (N, 5) (cx, cy, w, h, theta), got shape {b.shape}")
    n = b.shape[0]
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    lab = np.asarray(labels).reshape(-1)
    lev = np.asarray(levels).reshape(-1)
    for name, arr in (("scores", s), ("labels", lab), ("levels", lev)):
        if arr.shape[0] != n:
            raise ValueError(f"{name} has {arr.shape[0]} rows for {n} boxes")
    if not np.isfinite(b).all():
        raise ValueError("boxes contain NaN or infinite values")
    if n and not (np.issubdtype(lab.dtype, np.integer) and np.issubdtype(lev.dtype, np.integer)):
        raise ValueError("labels and levels must be integers")
    if n and (lab.min() < 0 or lab.max() >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes}) to index class_names, got {lab.min()}..{lab.max()}"
        )
    return Detections(b, s, lab.astype(np.int64), lev.astype(np.int64))


def _attribute_columns(
    geometry: BridgeGeometry, dets: Detections, class_names: Sequence[str], *, scene: str, model: str
) -> dict[str, np.ndarray]:
    """The attribute table, in field order, as typed numpy columns (NaN is written as null)."""
    n = dets.boxes.shape[0]

    def text(value: str) -> np.ndarray:
        return np.full(n, value, dtype=object)

    names = np.asarray(list(class_names), dtype=object)
    return {
        "score": dets.scores,
        "class": names[dets.labels] if n else np.empty(0, dtype=object),
        "length_m": geometry.length_m,
        "width_m": geometry.width_m,
        "bearing_deg": geometry.bearing_deg,
        "angle_px": geometry.angle_px,
        "cx_px": geometry.cx_px,
        "cy_px": geometry.cy_px,
        "level": dets.levels.astype(np.int32),
        "model": text(model),
        "scene": text(scene),
    }


def _closed_ccw(rings: np.ndarray) -> np.ndarray:
    """``(N, 4, 2)`` corner rings to closed ``(N, 5, 2)`` rings, counter-clockwise in x-right/y-up."""
    x, y = rings[..., 0], rings[..., 1]
    twice_area = (x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(axis=1)
    # The pixel frame is y-down, so a north-up transform flips the winding; reverse clockwise rings.
    rings = np.where((twice_area < 0)[:, None, None], rings[:, ::-1], rings)
    return np.concatenate([rings, rings[:, :1]], axis=1)


def _wrap_longitudes(rings: np.ndarray) -> np.ndarray:
    """Shift each ring by whole turns so that its first corner lies in [-180, 180).

    A whole ring moves together, so a scene on a 0..360 longitude grid comes out in RFC 7946's
    range without tearing a polygon apart.
    """
    turns = np.floor((rings[:, :1, 0] + 180.0) / 360.0)
    out = rings.copy()
    out[..., 0] -= turns * 360.0
    return out


def _write_geojson(
    tmp: Path, geometry: BridgeGeometry, frame: MapFrame, columns: dict[str, np.ndarray]
) -> None:
    assert frame.crs is not None  # checked by the caller: RFC 7946 needs a CRS to reproject from
    transformer = lonlat_transformer(frame.crs)
    if transformer is None:
        raise OutputError(f"cannot reproject {frame.crs.name!r} to WGS84 longitude/latitude for GeoJSON")
    lonlat = to_lonlat(transformer, geometry.rings)
    if not np.isfinite(lonlat).all():
        raise OutputError(f"some boxes could not be reprojected from {frame.crs.name!r} to WGS84")
    rings = np.round(_closed_ccw(_wrap_longitudes(lonlat)), GEOJSON_DECIMALS)
    names = list(columns)
    features = []
    for i in range(rings.shape[0]):
        properties = {name: _json_value(columns[name][i]) for name in names}
        features.append(
            {
                "type": "Feature",
                "properties": properties,
                "geometry": {"type": "Polygon", "coordinates": [rings[i].tolist()]},
            }
        )
    collection = {"type": "FeatureCollection", "name": LAYER_NAME, "features": features}
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(collection, f, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        f.write("\n")


def _json_value(value: object) -> object:
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    return value


def _write_ogr(
    tmp: Path,
    driver: str,
    geometry: BridgeGeometry,
    frame: MapFrame,
    columns: dict[str, np.ndarray],
    *,
    description: str | None,
) -> None:
    rings = _closed_ccw(geometry.rings)
    wkb = shapely.to_wkb(shapely.polygons(rings)) if rings.shape[0] else np.empty(0, dtype=object)
    layer_options: dict[str, str] = {}
    if driver == "GPKG":
        layer_options["GEOMETRY_NAME"] = GEOMETRY_COLUMN
        if description:
            layer_options["DESCRIPTION"] = description
    with warnings.catch_warnings():
        # A missing CRS has already been reported to the caller as a NoCRSWarning.
        warnings.filterwarnings("ignore", message="'crs' was not provided", category=UserWarning)
        pyogrio.raw.write(
            str(tmp),
            wkb,
            list(columns.values()),
            list(columns),
            layer=LAYER_NAME,
            driver=driver,
            geometry_type="Polygon",
            crs=frame.crs.to_wkt() if frame.crs is not None else None,
            layer_options=layer_options or None,
        )


def _embed_qgis_style(gpkg: Path, qml: str) -> None:
    """Store ``qml`` as the default style of the ``bridges`` layer, as QGIS's "Save to database" does.

    The table is created through GDAL, like QGIS itself does, so it is registered in
    ``gpkg_contents`` as an attribute table (QGIS's OGR provider only looks for it there). The
    columns, names and types follow ``QgsOgrProviderMetadata::saveStyle``; QGIS picks the row with
    ``useAsDefault`` for the layer named in ``f_table_name`` / ``f_geometry_column``.
    """
    now = np.array([np.datetime64(dt.datetime.now(dt.UTC).replace(tzinfo=None), "ms")])

    def text(value: str | None) -> np.ndarray:
        return np.array([value], dtype=object)

    columns = {
        "f_table_catalog": text(""),
        "f_table_schema": text(""),
        "f_table_name": text(LAYER_NAME),
        "f_geometry_column": text(GEOMETRY_COLUMN),
        "styleName": text(LAYER_NAME),
        "styleQML": text(qml),
        "styleSLD": text(""),
        "useAsDefault": np.array([True]),
        "description": text("hbdnet bridge detections"),
        "owner": text(""),
        "ui": text(None),
        "update_time": now,
    }
    pyogrio.raw.write(
        str(gpkg),
        None,
        list(columns.values()),
        list(columns),
        layer="layer_styles",
        driver="GPKG",
        layer_options={"FID": "id"},
        # GDAL's offset code for UTC is 100 (RFC 56), so the time is written with a trailing Z.
        gdal_tz_offsets={"update_time": np.array([100])},
    )
