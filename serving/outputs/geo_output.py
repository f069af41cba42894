"""Bridge detections as files QGIS users open directly: GeoJSON, GeoPackage, FlatGeobuf, QML style.

One polygon per bridge (its oriented rectangle, corners mapped through the scene's affine
transform) with the attributes ``score, class, length_m, width_m, bearing_deg, angle_px, cx_px,
cy_px, level, model, scene``. The layer is named after the file (``<stem>_bridges.gpkg`` holds the
layer ``<stem>_bridges``, see :func:`layer_name`). The format follows the file extension; every file
is written by GDAL through pyogrio, with counter-clockwise exterior rings:

* ``.geojson``: RFC 7946 as GDAL's GeoJSON driver writes it with ``RFC7946=YES``: reprojected to
  WGS84 longitude/latitude, right-hand winding, no ``crs`` member, 7 decimals (about 1 cm), and a
  box that crosses the antimeridian split into a MultiPolygon at it.
* ``.gpkg``: GeoPackage 1.2 (read without warnings by older QGIS and GDAL), the scene's CRS, the
  QGIS style stored in the ``layer_styles`` table the way QGIS stores it, as the layer's default, so
  the layer opens styled, with the same style as an SLD 1.1 (Symbology Encoding) for GeoServer,
  ArcGIS and other clients.
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
import os
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

import numpy as np
import pyogrio.errors
import pyogrio.raw
import shapely
from rasterio.transform import Affine

from serving.engine.gdal_errors import first_line
from serving.outputs.formats import OutputError, check_output_path
from serving.outputs.geometry_attrs import (
    BridgeGeometry,
    MapFrame,
    box_geometry,
    lonlat_transformer,
    map_frame,
    to_pyproj_crs,
)

GEOMETRY_COLUMN = "geom"
GEOJSON_DECIMALS = 7  # 1e-7 degree is about 1 cm on the ground (RFC7946=YES's default, said explicitly)
GPKG_VERSION = "1.2"  # GDAL's default, 1.4, makes QGIS 3.22 / GDAL 3.6 warn "may only be partially supported"
_GDAL_ERRORS = (
    pyogrio.errors.DataSourceError,
    pyogrio.errors.DataLayerError,
    pyogrio.errors.FieldError,
    pyogrio.errors.FeatureError,
    pyogrio.errors.GeometryError,
    pyogrio.errors.CRSError,
)


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


def bridges_sld() -> str:
    """The same style as an SLD 1.1 / SE 1.1 document (``serving/outputs/styles/bridges.sld``)."""
    return resources.files("serving.outputs").joinpath("styles", "bridges.sld").read_text(encoding="utf-8")


def layer_name(path: Path | str) -> str:
    """The name of the layer in the file at ``path``: its stem, the whole of it
    (``rotterdam_pan2_0.5m_harbour_bridges.gpkg`` -> ``rotterdam_pan2_0.5m_harbour_bridges``)."""
    return Path(path).stem


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
    searched: str | None = None,
) -> Path:
    """Write detections to ``path`` in the format its extension names; return ``path``.

    ``boxes`` are ``(N, 5)`` rows ``(cx, cy, w, h, theta)`` in full-resolution scene pixels;
    ``transform`` and ``crs`` are the scene's (rasterio ``Affine`` and ``CRS``; ``crs`` may be
    None). ``searched``: the area of interest the bridges were searched in, which the file's
    description then names (None: the whole scene; the description of a GeoJSON or FlatGeobuf file
    is then left out, as before). Raises :class:`OutputError` for an unknown extension or a path
    that cannot be written, and ``ValueError`` for inconsistent arrays.
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
    if suffix == ".geojson" and lonlat_transformer(pcrs) is None:
        raise OutputError(f"cannot write {path}: the scene's CRS {pcrs.name!r} cannot be reprojected to "
                          "WGS84 longitude/latitude for GeoJSON; write .gpkg or .fgb")
    qml = bridges_qml()
    layer = layer_name(path)

    description = f"HBD-Net bridges in {scene} ({model})"
    if searched is not None:
        description += f", searched within the area of interest {searched}"
    described = {"DESCRIPTION": description} if searched is not None else {}
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.partial{suffix}")
    try:
        if suffix == ".geojson":
            _write_ogr(tmp, "GeoJSON", layer, geometry, frame, columns,
                       layer_options={"RFC7946": "YES", "COORDINATE_PRECISION": str(GEOJSON_DECIMALS), **described})
        elif suffix == ".gpkg":
            _write_ogr(tmp, "GPKG", layer, geometry, frame, columns,
                       dataset_options={"VERSION": GPKG_VERSION},
                       layer_options={"GEOMETRY_NAME": GEOMETRY_COLUMN, "DESCRIPTION": description})
            if write_style:
                _embed_styles(tmp, layer, qml, _named_sld(layer))
        else:
            _write_ogr(tmp, "FlatGeobuf", layer, geometry, frame, columns, layer_options=described or None)
        os.replace(tmp, path)
        if write_style:
            path.with_suffix(".qml").write_text(qml, encoding="utf-8")
    except (OSError, *_GDAL_ERRORS) as exc:
        # GDAL names the file it was writing: the temporary one, which the user never asked for.
        reason = first_line(exc).replace(str(tmp), str(path)).replace(tmp.name, path.name)
        raise OutputError(f"cannot write {path}: {reason}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


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


def _write_ogr(
    tmp: Path,
    driver: str,
    layer: str,
    geometry: BridgeGeometry,
    frame: MapFrame,
    columns: dict[str, np.ndarray],
    *,
    dataset_options: dict[str, str] | None = None,
    layer_options: dict[str, str] | None = None,
) -> None:
    """Write the polygons (exterior rings made counter-clockwise: a north-up transform flips the
    pixel frame's winding) and ``columns`` as ``layer`` of a new ``driver`` file; NaN is null."""
    n = geometry.rings.shape[0]
    polygons = shapely.orient_polygons(shapely.polygons(geometry.rings)) if n else np.empty(0, dtype=object)
    with warnings.catch_warnings():
        # A missing CRS has already been reported to the caller as a NoCRSWarning.
        warnings.filterwarnings("ignore", message="'crs' was not provided", category=UserWarning)
        pyogrio.raw.write(
            str(tmp),
            shapely.to_wkb(polygons) if n else polygons,
            list(columns.values()),
            list(columns),
            layer=layer,
            driver=driver,
            geometry_type="Polygon",
            crs=frame.crs.to_wkt() if frame.crs is not None else None,
            dataset_options=dataset_options,
            layer_options=layer_options,
        )


def _named_sld(layer: str) -> str:
    """The shipped SLD with its NamedLayer named ``layer``, as QGIS names it in ``styleSLD``."""
    shipped = "<NamedLayer>\n    <se:Name>bridges</se:Name>"
    sld = bridges_sld()
    assert shipped in sld, "serving/outputs/styles/bridges.sld lost its NamedLayer name"
    return sld.replace(shipped, f"<NamedLayer>\n    <se:Name>{xml_escape(layer)}</se:Name>", 1)


def _embed_styles(gpkg: Path, layer: str, qml: str, sld: str) -> None:
    """Store ``qml`` and ``sld`` as the default style of ``layer``, as QGIS's "Save to database" does
    (QGIS fills ``styleSLD`` too, for GeoServer, ArcGIS and other clients that read no QML).

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
        "f_table_name": text(layer),
        "f_geometry_column": text(GEOMETRY_COLUMN),
        "styleName": text(layer),
        "styleQML": text(qml),
        "styleSLD": text(sld),
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
