"""Oriented boxes in scene pixels to map polygons and ground measurements.

A detection is a row ``(cx, cy, w, h, theta)`` in full-resolution scene pixels (the convention of
``hbdnet.boxes.convention``). A box coordinate ``(x, y)`` is a pixel *corner* coordinate, the same
frame as a rasterio transform's ``(col, row)``, so a corner maps to the map with
``transform * (x, y)``; pixel centres sit at ``+0.5`` in both frames.

Measurements are taken on the ground, not on the grid: both axes of a box are mapped through the
transform, reprojected to WGS84 longitude/latitude and measured with geodesics on the WGS84
ellipsoid. That makes ``length_m`` right for every CRS, including ones whose grid metres are far from
ground metres (Web Mercator at 60 degrees north doubles every length). Only a CRS that cannot be
related to the earth (an engineering CRS) falls back to grid distance in its linear unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyproj
from rasterio.transform import Affine

WGS84_LONLAT = pyproj.CRS.from_epsg(4326)
_GEOD = pyproj.Geod(ellps="WGS84")


@dataclass(frozen=True)
class MapFrame:
    """Where output coordinates live: an affine map from scene pixels, and the CRS it lands in.

    ``crs`` is None for a scene without one; the coordinates are then in the frame QGIS itself
    uses for such a raster (see :func:`map_frame`).
    """

    transform: Affine
    crs: pyproj.CRS | None


@dataclass(frozen=True)
class BridgeGeometry:
    """N detections as map polygons and measurements; NaN marks a value that cannot be known.

    ``rings`` are the 4 corners of each box in the map frame (not closed, not yet oriented),
    shape (N, 4, 2). Angles are degrees. ``length_m >= width_m`` always.
    """

    rings: np.ndarray  # (N, 4, 2) map x, y
    length_m: np.ndarray  # (N,) ground length of the long side
    width_m: np.ndarray  # (N,) ground length of the short side
    bearing_deg: np.ndarray  # (N,) long axis, clockwise from true north, in [0, 180)
    angle_px: np.ndarray  # (N,) le90 theta in the pixel frame, in [-90, 90)
    cx_px: np.ndarray  # (N,)
    cy_px: np.ndarray  # (N,)


def to_pyproj_crs(crs: object | None) -> pyproj.CRS | None:
    """A rasterio ``CRS``, pyproj ``CRS``, WKT or ``"EPSG:xxxx"`` string as a pyproj CRS."""
    if crs is None:
        return None
    if isinstance(crs, pyproj.CRS):
        return crs
    # rasterio's CRS has to_wkt(); pyproj.CRS.from_user_input understands that and strings alike.
    return pyproj.CRS.from_user_input(crs)


def map_frame(transform: Affine, crs: pyproj.CRS | None) -> MapFrame:
    """The transform that places boxes over the raster as QGIS draws it.

    A raster without a geotransform (rasterio reports the identity) is drawn by QGIS with the
    geotransform ``(0, 1, 0, 0, 0, -1)``: x = column, y = -row, so the image lies upright in
    y <= 0. Boxes for such a scene get the same flip so that they overlay it. Any other transform
    is used as it is, with or without a CRS, because QGIS uses it too.
    """
    if crs is None and transform.is_identity:
        return MapFrame(Affine.scale(1.0, -1.0), None)
    return MapFrame(transform, crs)


def apply_affine(transform: Affine, pts: np.ndarray) -> np.ndarray:
    """Map ``(..., 2)`` pixel coordinates ``(col, row)`` to ``(..., 2)`` map coordinates."""
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
    x, y = pts[..., 0], pts[..., 1]
    return np.stack([a * x + b * y + c, d * x + e * y + f], axis=-1)


def lonlat_transformer(crs: pyproj.CRS) -> pyproj.Transformer | None:
    """Scene CRS to WGS84 lon/lat (x = lon, y = lat), or None when the CRS is not earth-bound."""
    if crs.geodetic_crs is None:
        return None
    return pyproj.Transformer.from_crs(crs, WGS84_LONLAT, always_xy=True)


def to_lonlat(transformer: pyproj.Transformer, pts: np.ndarray) -> np.ndarray:
    """``(..., 2)`` map coordinates to ``(..., 2)`` lon/lat; non-finite where PROJ fails."""
    lon, lat = transformer.transform(pts[..., 0], pts[..., 1], errcheck=False)
    return np.stack([np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)], axis=-1)


def _grid_unit_to_metre(crs: pyproj.CRS) -> float:
    """Metres per unit of a CRS's first axis, NaN when its unit is not a length."""
    axes = crs.axis_info
    if not axes:
        return math.nan
    axis = axes[0]
    # Angular units (degree, radian) carry a conversion factor to radians, not to metres.
    if axis.unit_name.lower() in {"degree", "radian", "grad", "arc-second", "arc-minute"}:
        return math.nan
    return float(axis.unit_conversion_factor)


def _measure_axis(
    start: np.ndarray, end: np.ndarray, frame: MapFrame, transformer: pyproj.Transformer | None
) -> tuple[np.ndarray, np.ndarray]:
    """Ground length (m) and true bearing (deg, [0, 180)) of the segments ``start -> end`` (map frame)."""
    n = start.shape[0]
    nan = np.full(n, np.nan)
    if frame.crs is None:
        return nan, nan
    if transformer is None:
        metre = _grid_unit_to_metre(frame.crs)
        return np.hypot(*(end - start).T) * metre, nan
    p = to_lonlat(transformer, start)
    q = to_lonlat(transformer, end)
    if n == 0:
        return nan, nan
    fwd, back, distance = _GEOD.inv(p[:, 0], p[:, 1], q[:, 0], q[:, 1])
    # The azimuth changes along a geodesic (by the meridian convergence over its length, 5e-4
    # degree for 100 m at 45 degrees); the circular mean of the start and end azimuths is the
    # azimuth at the middle, i.e. at the box centre, and does not depend on which end is "start".
    a1 = np.radians(np.asarray(fwd, dtype=np.float64))
    a2 = np.radians(np.asarray(back, dtype=np.float64) + 180.0)
    azimuth = np.degrees(np.arctan2(np.sin(a1) + np.sin(a2), np.cos(a1) + np.cos(a2)))
    distance = np.asarray(distance, dtype=np.float64)
    bad = ~(np.isfinite(p).all(axis=1) & np.isfinite(q).all(axis=1))
    distance[bad] = np.nan
    azimuth[bad] = np.nan
    # An axis has no head: fold the azimuth onto a half turn. 180 - 1e-13 can come out of
    # the modulo as exactly 180.0 in float arithmetic; fold that to 0 as well.
    bearing = np.mod(azimuth, 180.0)
    bearing[bearing >= 180.0] = 0.0
    return distance, bearing


def ground_sample_distance(transform: Affine, crs: object | None, width: int,
                           height: int) -> tuple[float, float] | None:
    """The ground size of a pixel (metres across, metres down) at the scene's centre: for a CRS bound
    to the earth, the geodesic distance on the WGS84 ellipsoid from the centre pixel to its
    neighbours (so also for degrees, and with a projection's scale factor); for a projected CRS
    without one, the pixel size in its unit as metres. None without a CRS or a length unit."""
    pcrs = to_pyproj_crs(crs)
    if pcrs is None:
        return None
    frame = MapFrame(transform, pcrs)
    centre = np.array([[width / 2.0, height / 2.0]] * 2)
    ends = centre + np.array([[1.0, 0.0], [0.0, 1.0]])
    across_down, _ = _measure_axis(apply_affine(transform, centre), apply_affine(transform, ends), frame,
                                   lonlat_transformer(pcrs))
    if not np.isfinite(across_down).all():
        return None
    return float(across_down[0]), float(across_down[1])


def pixel_boxes_le90(boxes: np.ndarray) -> np.ndarray:
    """``(N, 5)`` boxes in any angle form, rewritten in le90 (w >= h, theta in [-pi/2, pi/2))."""
    import torch  # here, not at the top: the scene's ground sample distance is measured without torch

    from hbdnet.boxes.convention import regularize_le90

    return regularize_le90(torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float64))).numpy()


def box_geometry(boxes: np.ndarray, frame: MapFrame) -> BridgeGeometry:
    """Map polygons and measurements for ``(N, 5)`` scene-pixel boxes."""
    le90 = pixel_boxes_le90(boxes)
    n = le90.shape[0]
    import torch

    from hbdnet.boxes.convention import obb_to_poly

    corners_px = obb_to_poly(torch.from_numpy(le90)).numpy().reshape(n, 4, 2)
    rings = apply_affine(frame.transform, corners_px)

    # Axis end points: the midpoints of the box's end edges. An affine map keeps midpoints, so
    # mapping c +- u (and c +- v) is the same as taking midpoints of the mapped corners.
    cx, cy, w, h, t = le90.T
    cos, sin = np.cos(t), np.sin(t)
    centre = np.stack([cx, cy], axis=-1)
    u = np.stack([w / 2 * cos, w / 2 * sin], axis=-1)
    v = np.stack([-h / 2 * sin, h / 2 * cos], axis=-1)
    transformer = lonlat_transformer(frame.crs) if frame.crs is not None else None
    along_m, along_bearing = _measure_axis(
        apply_affine(frame.transform, centre - u),
        apply_affine(frame.transform, centre + u),
        frame,
        transformer,
    )
    across_m, across_bearing = _measure_axis(
        apply_affine(frame.transform, centre - v),
        apply_affine(frame.transform, centre + v),
        frame,
        transformer,
    )
    # With non-square pixels the pixel-long side can be the short one on the ground.
    swap = across_m > along_m
    length = np.where(swap, across_m, along_m)
    width = np.where(swap, along_m, across_m)
    bearing = np.where(swap, across_bearing, along_bearing)
    return BridgeGeometry(
        rings=rings,
        length_m=length,
        width_m=width,
        bearing_deg=bearing,
        angle_px=np.degrees(t),
        cx_px=cx.copy(),
        cy_px=cy.copy(),
    )
