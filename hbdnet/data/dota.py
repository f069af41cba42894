"""DOTA-format labels (GLH-Bridge, NWPU bridges, DOTA): one ``labelTxt/<id>.txt`` per ``images/<id>.*``.

A label line is ``x1 y1 x2 y2 x3 y3 x4 y4 <class> [<difficulty>]`` in full-resolution pixels;
optional header lines ``imagesource:...`` and ``gsd:...`` come first. The polygon becomes its
minimum-area rectangle in the internal ``le90`` convention (:func:`hbdnet.boxes.poly_to_obb`), and,
as mmrotate's ``DOTADataset`` does, rectangles with a side under 2 px are dropped.

``difficult`` is ``difficulty > 0``. The authors trained and evaluated on every box regardless of
difficulty (their difficulty threshold is 100); the flag is carried so that evaluation can choose.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from hbdnet.boxes.convention import poly_to_obb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
HEADER_PREFIXES = ("imagesource:", "gsd:")
MIN_BOX_SIDE = 2.0
_SEAM_TOL = 1e-6  # rad


class DotaFormatError(ValueError):
    """A label file that does not follow the DOTA text format; the message names file and line."""


@dataclass
class DotaImage:
    """One image and its boxes (full-resolution pixels).

    A scene of the user's (``hbdnet finetune``) may add how its pixels become the model's: ``bands``
    (1-based, read in this order; default the first three, or the one band) and ``to_uint8`` (a
    picklable callable from the read ``(C, H, W)`` array to uint8 RGB-ordered bands: the scene's
    stretch at inference). ``background`` (shapely, full-resolution pixels) is where a window without
    a box is known to hold no bridge: elsewhere such windows are not used at all (default: everywhere).
    ``opener`` (picklable, called with no argument) opens the image as a context manager of a rasterio
    dataset, for a scene read on another grid than its file's (default: ``open_image(image_path)``);
    boxes and background are then in that grid's pixels.
    """

    image_path: Path
    boxes: Tensor  # (N, 5) float32, le90
    difficult: Tensor  # (N,) bool
    polygons: np.ndarray  # (N, 8) float64, the label file's corners for the kept boxes
    bands: tuple[int, ...] | None = None
    to_uint8: Callable[[np.ndarray], np.ndarray] | None = None
    background: object | None = None  # shapely geometry
    opener: Callable[[], AbstractContextManager] | None = None

    @property
    def image_id(self) -> str:
        return self.image_path.stem


def read_dota_labels(
    path: Path | str, classes: Sequence[str] | None = ("bridge",)
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Parse one label file: ``(polygons (N, 8) float64, class names, difficulties (N,) int64)``.

    Only lines whose class is in ``classes`` are returned (``None``: every class). Blank lines and
    the ``imagesource:`` / ``gsd:`` headers are skipped; anything else that is not a label line
    raises :class:`DotaFormatError` with ``file:line``.
    """
    path = Path(path)
    wanted = None if classes is None else set(classes)
    polys: list[list[float]] = []
    names: list[str] = []
    diffs: list[int] = []
    with path.open(encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.lower().startswith(HEADER_PREFIXES):
                continue
            tokens = line.split()
            where = f"{path}:{lineno}"
            if len(tokens) not in (9, 10):
                raise DotaFormatError(
                    f"{where}: expected 'x1 y1 x2 y2 x3 y3 x4 y4 class [difficulty]' "
                    f"(9 or 10 fields), got {len(tokens)}: {line!r}"
                )
            try:
                coords = [float(t) for t in tokens[:8]]
            except ValueError:
                raise DotaFormatError(f"{where}: non-numeric coordinate in {line!r}") from None
            if not all(math.isfinite(v) for v in coords):
                raise DotaFormatError(f"{where}: non-finite coordinate in {line!r}")
            difficulty = 0
            if len(tokens) == 10:
                try:
                    difficulty = int(tokens[9])
                except ValueError:
                    raise DotaFormatError(
                        f"{where}: difficulty must be an integer, got {tokens[9]!r}"
                    ) from None
            name = tokens[8]
            if wanted is not None and name not in wanted:
                continue
            polys.append(coords)
            names.append(name)
            diffs.append(difficulty)
    polygons = np.asarray(polys, dtype=np.float64).reshape(-1, 8)
    return polygons, names, np.asarray(diffs, dtype=np.int64)


def fit_boxes(points: Tensor) -> Tensor:
    """Minimum-area ``le90`` rectangles (float64) of ``(N, 2K)`` point sets.

    A rectangle along the y axis can come out of the fit with theta a rounding error below
    ``+pi/2`` instead of at ``-pi/2``; in float32 that rounds to ``pi/2`` itself, outside ``le90``.
    Such angles are moved to the ``-pi/2`` side so that one rectangle has one row.
    """
    boxes = poly_to_obb(points.double())
    t = boxes[:, 4]
    boxes[:, 4] = torch.where(t > math.pi / 2 - _SEAM_TOL, t - math.pi, t)
    return boxes


def polygons_to_boxes(polygons: np.ndarray, difficulties: np.ndarray) -> tuple[Tensor, Tensor, np.ndarray]:
    """Minimum-area ``le90`` rectangles of label polygons, without those with a side under 2 px.

    Returns ``(boxes (K, 5) float32, difficult (K,) bool, kept polygons (K, 8))``.
    """
    if len(polygons) == 0:
        return torch.zeros((0, 5)), torch.zeros((0,), dtype=torch.bool), polygons.reshape(0, 8)
    # Fit in float64: scene coordinates reach 16k px, where float32 loses sub-pixel precision.
    boxes = fit_boxes(torch.from_numpy(polygons))
    keep = (boxes[:, 2] >= MIN_BOX_SIDE) & (boxes[:, 3] >= MIN_BOX_SIDE)
    difficult = torch.from_numpy(difficulties > 0)
    return boxes[keep].float(), difficult[keep], polygons[keep.numpy()]


def find_image(images_dir: Path, stem: str) -> Path | None:
    """``images_dir/<stem><suffix>`` for the first existing suffix of ``IMAGE_SUFFIXES`` (any case)."""
    for suffix in IMAGE_SUFFIXES:
        for candidate in (images_dir / f"{stem}{suffix}", images_dir / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def load_dota_folder(
    root: Path | str,
    classes: Sequence[str] | None = ("bridge",),
    missing_image: Literal["error", "skip"] = "error",
) -> list[DotaImage]:
    """Every ``root/labelTxt/<id>.txt`` with its image ``root/images/<id>.{png,jpg,jpeg,tif,tiff}``.

    The list follows the label files (sorted by name), as mmrotate does: images without a label file
    are not loaded, and images whose labels hold no box of ``classes`` are kept with zero boxes (a
    window dataset decides what to do with empty windows).

    A label file without its image is a broken dataset, so by default it raises ``FileNotFoundError``
    naming every such file. ``missing_image="skip"`` instead warns (``UserWarning``, once per file)
    and leaves it out, e.g. for DOTA's devkit example, whose ``P1234`` image is not shipped.
    """
    root = Path(root)
    labels_dir, images_dir = root / "labelTxt", root / "images"
    if not labels_dir.is_dir():
        raise FileNotFoundError(f"no labelTxt folder in {root}")
    if missing_image not in ("error", "skip"):
        raise ValueError(f"missing_image must be 'error' or 'skip', got {missing_image!r}")
    items: list[DotaImage] = []
    missing: list[Path] = []
    for label_path in sorted(labels_dir.glob("*.txt")):
        image_path = find_image(images_dir, label_path.stem)
        if image_path is None:
            missing.append(label_path)
            continue
        polygons, _, difficulties = read_dota_labels(label_path, classes)
        boxes, difficult, kept = polygons_to_boxes(polygons, difficulties)
        items.append(DotaImage(image_path=image_path, boxes=boxes, difficult=difficult, polygons=kept))
    if missing and missing_image == "error":
        names = ", ".join(str(p) for p in missing)
        raise FileNotFoundError(
            f"{len(missing)} label file(s) without an image in {images_dir} "
            f"(looked for {'/'.join(IMAGE_SUFFIXES)}): {names}; pass missing_image='skip' to leave them out"
        )
    for label_path in missing:
        warnings.warn(f"{label_path}: no image {label_path.stem}.* in {images_dir}; skipped", stacklevel=2)
    return items
