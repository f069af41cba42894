"""The pyramid planned in ground units: which resolution a scene's finest level runs at and which
levels are run, from the scene's ground sample distance (GSD) and the range its model was made for.

A model file records the GSDs it sees bridges at (``ModelGsd``: min, best, max in metres a pixel). A
scene's GSD comes from its CRS and transform (``ground_sample_distance``: geodesic, so also for
degrees) or is given (``--gsd``). Then:

* the finest level is the scene resampled into the model's ``min`` to ``best`` GSDs, in both
  directions: down to ``min`` for a scene finer than it (a 0.1 m scene does not run 0.1 m windows
  through a model that sees nothing more below 0.25 m, and runs far fewer windows), up towards
  ``best`` for a coarser one, at most ``max_upsample`` times (past that the pixels only get
  blurrier); a scene within them, or within 10 % of the GSD it would be resampled to, runs as it is;
* the pyramid halves that working grid as before (``hbdnet.pyramid``), and levels coarser than the
  model's ``max`` are not run;
* ``resolution="native"`` keeps the scene's own pixels (the power-of-two pyramid of before) but still
  leaves out levels finer than ``min`` or coarser than ``max``; a number runs the finest level at
  that GSD.

Without a GSD (a scene with no CRS and no ``--gsd``) or a model range, the scene runs as it is, every
level.

An area of interest crops the grid to its bounds and half a window around them, so that only that part
of the scene is read (a large remote COG is not downloaded whole for a small area) and the pyramid
is the part's. Boxes come back in the scene's own pixels (``Regrid.to_scene``), so outputs keep its
grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import shapely
from affine import Affine

from hbdnet.pyramid import pyramid_levels
from serving.engine.scene import MIN_SCENE_SIDE, Regrid, SceneError, SceneInfo
from serving.model_ref import ModelGsd

Resolution = float | Literal["native"] | None
_SAME = 1.1  # within this ratio of the target GSD a scene is run as it is
_EDGE = 1.05  # a level this close outside the model's range still runs (rounding of GSDs)


@dataclass(frozen=True)
class ResolutionPlan:
    """How a scene's pyramid sits in ground units: ``scene_gsd`` (metres a scene pixel; None: unknown),
    where it came from (``"crs"`` or ``"given"``), the ``regrid`` the scene is read through (None: its
    own pixels, all of them), the GSD of each level of the working grid's pyramid, the ``levels`` that
    are run (None: all) and the ``crop`` of the scene read for an area of interest."""

    scene_gsd: float | None = None
    source: str | None = None
    regrid: Regrid | None = None
    level_gsds: tuple[float, ...] = ()
    levels: tuple[int, ...] | None = None
    crop: tuple[int, int, int, int] | None = None  # the part read (x0, y0, x1, y1 scene px); None: all

    @property
    def run_gsd(self) -> float | None:
        """The GSD of the finest level run."""
        if not self.level_gsds:
            return None
        return self.level_gsds[self.levels[0] if self.levels else 0]

    def summary(self) -> str | None:
        """One line for people: the scene's GSD, the resampling, the part read and the levels left
        out (None when there is nothing to say)."""
        parts = []
        if self.scene_gsd is not None:
            parts.append(f"ground sample distance {_m(self.scene_gsd)}{' (given)' if self.source == 'given' else ''}")
        r = self.regrid
        if r is not None and r.factor != 1:
            parts.append(f"resampled {'down' if r.factor < 1 else 'up'} to {_m(self.level_gsds[0])} ({r.factor:.3g}x)")
        if self.crop is not None:
            x0, y0, x1, y1 = self.crop
            parts.append(f"only the area of interest read: {x1 - x0} x {y1 - y0} scene px from ({x0}, {y0})")
        line = ", ".join(parts)
        if not line:
            return None
        if self.levels is not None:
            left = [k for k in range(len(self.level_gsds)) if k not in self.levels]
            if left:
                line += "; levels outside the model's range not run: " + ", ".join(
                    f"{k} ({_m(self.level_gsds[k])})" for k in left)
        return line


def _m(gsd: float) -> str:
    return f"{gsd:.3g} m"


def scene_gsd(info: SceneInfo) -> float | None:
    """Metres a pixel at the scene's centre, from its CRS and transform (``gsd_metres``)."""
    return gsd_metres(info.transform, info.crs, info.width, info.height)


def gsd_metres(transform: Affine, crs: object | None, width: int, height: int) -> float | None:
    """One ground sample distance for a grid: the geometric mean of a pixel's ground size across and
    down at its centre (``ground_sample_distance``); None without a CRS or a length unit."""
    from serving.outputs.geometry_attrs import ground_sample_distance  # pyproj: only when asked

    across_down = ground_sample_distance(transform, crs, width, height)
    if across_down is None:
        return None
    return math.sqrt(across_down[0] * across_down[1])


def check_resolution(resolution: Resolution) -> Resolution:
    """``ValueError`` (one line) unless ``resolution`` is None, ``"native"`` or a positive number."""
    if resolution is None or resolution == "native":
        return resolution
    if isinstance(resolution, str) or not resolution > 0 or not math.isfinite(resolution):
        raise ValueError(f"resolution must be 'native' or metres a pixel above 0, got {resolution!r}")
    return float(resolution)


def plan_resolution(info: SceneInfo, model: ModelGsd | None, *, gsd: float | None = None,
                    resolution: Resolution = None, window: int = 1024,
                    area_px: shapely.Geometry | None = None) -> ResolutionPlan:
    """The ``ResolutionPlan`` of the scene ``info`` for a model made for ``model`` (None: unknown).
    ``gsd`` overrides the scene's own; ``resolution`` as in the module's docstring; ``area_px``: an
    area of interest in the scene's pixels, to which the grid is cropped. ``SceneError`` (one line)
    when a resolution is asked of a scene whose GSD is unknown, or no level of the scene lies in the
    model's range."""
    g = gsd if gsd is not None else scene_gsd(info)
    return plan_grid(info.width, info.height, g, model, source="given" if gsd is not None else "crs",
                     resolution=resolution, window=window, label=info.uri, area_px=area_px)


def plan_grid(width: int, height: int, gsd: float | None, model: ModelGsd | None, *, source: str = "given",
              resolution: Resolution = None, window: int = 1024, label: str = "the scene",
              area_px: shapely.Geometry | None = None) -> ResolutionPlan:
    """``plan_resolution`` for a ``width`` x ``height`` scene of ``gsd`` metres a pixel (None:
    unknown), named ``label`` in errors."""
    resolution = check_resolution(resolution)
    if gsd is None and isinstance(resolution, float):
        raise SceneError(f"{label} has no ground sample distance (no CRS in metres or degrees): give "
                         "--gsd to run it at a resolution")
    factor = _factor(gsd, model, resolution)
    x0, y0, x1, y1 = _crop(area_px, width, height, window / 2 / factor) if area_px is not None else (0, 0, width, height)
    crop = (x0, y0, x1, y1) if (x0, y0, x1, y1) != (0, 0, width, height) else None
    regrid = None
    if factor != 1.0 or crop is not None:
        regrid = Regrid.of(x1 - x0, y1 - y0, factor, x0, y0)
        if min(regrid.width, regrid.height) < MIN_SCENE_SIDE:
            at = f" at {_m(gsd / factor)}" if gsd is not None else ""
            raise SceneError(f"{label} is {regrid.width} x {regrid.height} px{at}, less than {MIN_SCENE_SIDE} px a side")
    if gsd is None:
        return ResolutionPlan(regrid=regrid, crop=crop)
    h, w = (regrid.height, regrid.width) if regrid else (height, width)
    level_gsds = tuple(gsd / factor * lv.scale for lv in pyramid_levels(h, w, window))
    levels = None
    if model is not None:
        # a resolution asked for is run, however fine; coarse levels beyond the model's range are not
        lo = 0.0 if isinstance(resolution, float) else model.min / _EDGE
        kept = tuple(k for k, lg in enumerate(level_gsds) if lo <= lg <= model.max * _EDGE)
        if not kept:
            raise SceneError(f"{label}: no pyramid level of a scene at {_m(gsd)} a pixel lies within the "
                             f"{_m(model.min)} to {_m(model.max)} this model sees bridges at")
        levels = kept if len(kept) < len(level_gsds) else None
    return ResolutionPlan(gsd, source, regrid, level_gsds, levels, crop)


def _factor(gsd: float | None, model: ModelGsd | None, resolution: Resolution) -> float:
    """Working pixels to a scene pixel (1.0: the scene's own, also within 10 % of the target)."""
    if gsd is None or resolution == "native" or (model is None and resolution is None):
        return 1.0
    if isinstance(resolution, float):
        factor = gsd / resolution
    elif gsd < model.min:  # finer than the model can use: down to its finest
        factor = gsd / model.min
    elif gsd > model.best:  # coarser than it sees small bridges at: up towards it, so far
        factor = min(gsd / model.best, model.max_upsample)
    else:
        factor = 1.0
    return factor if max(factor, 1 / factor) > _SAME else 1.0


def _crop(area_px: shapely.Geometry, width: int, height: int, margin: float) -> tuple[int, int, int, int]:
    """The part of the scene to read for an area of interest: its bounds and ``margin`` scene pixels
    around them (so that a bridge centred near its edge is seen whole), on the scene, in whole pixels;
    the whole scene when the area misses it or the part would not be much smaller (90 %)."""
    ax0, ay0, ax1, ay1 = shapely.bounds(area_px)
    x0, y0 = max(0, math.floor(ax0 - margin)), max(0, math.floor(ay0 - margin))
    x1, y1 = min(width, math.ceil(ax1 + margin)), min(height, math.ceil(ay1 + margin))
    if shapely.is_empty(area_px) or x1 <= x0 or y1 <= y0 or (x1 - x0) * (y1 - y0) >= 0.9 * width * height:
        return 0, 0, width, height
    return x0, y0, x1, y1
