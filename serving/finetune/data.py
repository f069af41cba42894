"""A user's scenes and their corrected bridge polygons as training images (``hbdnet finetune``).

Labels are polygons of any shape in any CRS: each is reprojected to every scene, placed in its pixel
grid, and becomes its minimum rotated rectangle, the box the model learns. A layer written by ``hbdnet
detect`` and edited in a GIS is valid as it is (only the geometries are read). A polygon belongs to the
scene where its centre falls, and to the first such scene when scenes overlap, so that no bridge is
learnt twice. Reviewed areas (polygons too) say where every bridge has been labelled: only there do
windows without a label teach the model that it holds no bridge. Without them, each scene's footprint
counts as reviewed.

The pixels are the ones ``hbdnet detect`` gives the model: the same bands, and the same stretch for
scenes that are not 8-bit (``serving.engine.reader.prepare_read``, ``window_image``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely

from hbdnet.data.dota import DotaImage, polygons_to_boxes
from serving.engine.aoi import AoiError, in_scene_pixels, read_polygon_layer
from serving.engine.reader import ReadSpec, prepare_read, window_image
from serving.engine.scene import SceneError, open_scene


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
                    bands: tuple[int, ...] | None = None) -> LabelledScenes:
    """The scenes as training images with the label polygons that fall on them."""
    try:
        polygons, crs = read_polygon_layer(labels, f"labels {labels}")
        areas = read_polygon_layer(reviewed, f"reviewed areas {reviewed}") if reviewed is not None else None
    except AoiError as exc:
        raise FinetuneDataError(str(exc)) from None
    taken = np.zeros(len(polygons), bool)
    images = []
    for path in scenes:
        image, on_scene = _scene_image(path, polygons, crs, taken, areas, bands)
        taken |= on_scene
        images.append(image)
    if not taken.any():
        raise FinetuneDataError(f"labels {labels}: none of its {len(polygons)} polygons lies on the scenes given")
    files = [*scenes, labels, *([reviewed] if reviewed is not None else [])]
    return LabelledScenes(images, int((~taken).sum()), reviewed is not None, {str(p): sha256(p) for p in files})


def _scene_image(path: Path, polygons: np.ndarray, crs: str, taken: np.ndarray,
                 areas: tuple[np.ndarray, str] | None, bands: tuple[int, ...] | None) -> tuple[DotaImage, np.ndarray]:
    try:
        info = open_scene(str(path))
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
                      background=background)
    return image, on_scene
