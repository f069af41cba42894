"""A user's scenes and their corrected bridge polygons as training images (``hbdnet finetune``).

Labels are polygons of any shape in any CRS: each is reprojected to every scene, placed in its pixel
grid, and becomes its minimum rotated rectangle, the box the model learns. A layer written by ``hbdnet
detect`` and edited in a GIS is valid as it is (only the geometries are read). A polygon belongs to the
scene where its centre falls, and to the first such scene when scenes overlap, so that no bridge is
learnt twice. Reviewed areas (polygons too) say where every bridge has been labelled: only there do
windows without a label teach the model that it holds no bridge. Without them, each scene's footprint
counts as reviewed.

The pixels are the ones ``hbdnet detect`` gives the model: the same bands, the same stretch for
scenes that are not 8-bit (``serving.engine.reader.prepare_read``, ``window_image``), and the same
grid: a scene outside the model's ground sample distances is read resampled as detect reads it
(``serving.resolution``), with its labels and reviewed areas in that grid's pixels.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely

from hbdnet.data.dota import DotaImage, polygons_to_boxes
from serving.engine.aoi import AoiError, in_scene_pixels, read_polygon_layer
from serving.engine.reader import ReadSpec, prepare_read, window_image
from serving.engine.scene import Regrid, SceneError, open_grid, open_scene, regridded
from serving.model_ref import ModelGsd
from serving.resolution import plan_resolution


class FinetuneDataError(ValueError):
    """Scenes or labels that cannot be trained on (one line)."""


@dataclass(frozen=True)
class ScenePixels:
    """A scene window as read (file dtype, ``spec.read_bands``) -> the uint8 RGB the detector gets."""

    spec: ReadSpec

    def __call__(self, data: np.ndarray) -> np.ndarray:
        return window_image(self.spec, data, None)


@dataclass
class LabelledScenes:
    images: list[DotaImage]  # one per scene, in the order given
    labels_outside: int  # polygons whose centre is on no scene
    reviewed_given: bool
    checksums: dict[str, str]  # file -> sha256, the scenes' and the layers'
    regrids: dict[Path, Regrid] = field(default_factory=dict)  # scenes read resampled, by path

    def to_grid(self, image: DotaImage, boxes: np.ndarray) -> np.ndarray:
        """``(N, 5)`` boxes in the scene's pixels (what detect returns) in ``image``'s grid."""
        regrid = self.regrids.get(image.image_path)
        return regrid.from_scene(boxes) if regrid is not None else boxes

    @property
    def bridges(self) -> int:
        return sum(len(img.boxes) for img in self.images)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def labelled_scenes(scenes: list[Path], labels: Path, reviewed: Path | None = None,
                    bands: tuple[int, ...] | None = None, gsd: ModelGsd | None = None) -> LabelledScenes:
    """The scenes as training images with the label polygons that fall on them, each on the grid
    detect would read it on for a model made for ``gsd``."""
    try:
        polygons, crs = read_polygon_layer(labels, f"labels {labels}")
        areas = read_polygon_layer(reviewed, f"reviewed areas {reviewed}") if reviewed is not None else None
    except AoiError as exc:
        raise FinetuneDataError(str(exc)) from None
    taken = np.zeros(len(polygons), bool)
    images = []
    regrids = {}
    for path in scenes:
        image, on_scene, regrid = _scene_image(path, polygons, crs, taken, areas, bands, gsd)
        taken |= on_scene
        images.append(image)
        if regrid is not None:
            regrids[path] = regrid
    if not taken.any():
        raise FinetuneDataError(f"labels {labels}: none of its {len(polygons)} polygons lies on the scenes given")
    files = [*scenes, labels, *([reviewed] if reviewed is not None else [])]
    return LabelledScenes(images, int((~taken).sum()), reviewed is not None, {str(p): sha256(p) for p in files},
                          regrids)


def _scene_image(path: Path, polygons: np.ndarray, crs: str, taken: np.ndarray,
                 areas: tuple[np.ndarray, str] | None, bands: tuple[int, ...] | None,
                 gsd: ModelGsd | None) -> tuple[DotaImage, np.ndarray, Regrid | None]:
    try:
        scene = open_scene(str(path))
        regrid = plan_resolution(scene, gsd).regrid
        info = regridded(scene, regrid)
        spec, _ = prepare_read(info, bands=bands, coverage_scan=False)
    except SceneError as exc:
        raise FinetuneDataError(str(exc)) from None
    try:
        in_pixels = in_scene_pixels(polygons, crs, info.crs, info.transform, "the labels")
        reviewed = None
        if areas is not None:
            reviewed = shapely.union_all(in_scene_pixels(*areas, info.crs, info.transform, "the reviewed areas"))
    except AoiError as exc:
        raise FinetuneDataError(f"{path}: {exc}") from None
    footprint = shapely.box(0, 0, info.width, info.height)
    on_scene = shapely.contains_xy(footprint, *shapely.get_coordinates(shapely.centroid(in_pixels)).T) & ~taken
    rectangles = shapely.oriented_envelope(in_pixels[on_scene])
    corners = np.array([np.asarray(r.exterior.coords)[:4] for r in rectangles if r.geom_type == "Polygon"],
                       np.float64).reshape(-1, 8)
    boxes, difficult, kept = polygons_to_boxes(corners, np.zeros(len(corners), np.int64))
    background = footprint if reviewed is None else shapely.intersection(reviewed, footprint)
    image = DotaImage(path, boxes, difficult, kept, bands=spec.read_bands, to_uint8=ScenePixels(spec),
                      background=background,
                      opener=functools.partial(open_grid, scene.uri, regrid) if regrid is not None else None)
    return image, on_scene, regrid
