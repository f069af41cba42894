"""Training windows cut on the fly from whole images and their pyramid levels (no pre-cut folders).

The index is built from box geometry and image headers only: every window of the requested levels
from :func:`hbdnet.pyramid.plan_pyramid`, with its ground truth worked out once. Pixels are read per
item with :func:`hbdnet.data.raster.read_pyramid_window`, i.e. exactly the level the detector
sees at inference.

Ground truth of a window (section 6.1 of the method digest, with one deliberate change):

* scene boxes are moved to the level (centre and size divided by the scale, angle unchanged);
* a box is kept when its visible fraction, IoF = area(box & window) / area(box), is at least
  ``iof_thr`` (0.3 as the authors);
* a kept box that leaves the window is **clipped**: it becomes the minimum-area rectangle of the
  intersection polygon of the box and the window, and is flagged ``truncated``. The authors'
  splitter instead kept the whole box, sticking out of the patch. Clipping is chosen because the
  large-scene engine assumes that a window's detector reports the part of a bridge it can see
  and fuses those fragments across windows and levels; training on boxes that extend into unseen
  pixels would teach the detector to guess beyond the window. The fitted rectangle can still
  stick out of the window a little where the cut is oblique (a cut rectangle is a pentagon);
* boxes under 2 px on a side, or whose longer side is under ``min_length_local`` (level 0) /
  ``min_length_global`` (coarser levels; 15 px as section 4.2) after clipping, are dropped.

Windows with no box left are skipped (``filter_empty``), as the authors do, except a seeded random
``empty_fraction`` of them, kept as negatives. The skipped ones stay reachable through
:meth:`WindowDataset.spare_empty`, for a training set that draws fresh negatives every epoch.

For the IFF training path a level-``L`` window can carry ``with_global_crops = n`` co-located crops
of levels ``L+1 .. L+n`` (section 4.1), each ``c x c`` (``c`` = the window size), centred on the
window's footprint, clamped into the level and padded at the bottom/right with ``pad_value`` when
the level is smaller than ``c``: the mean colour of the model's normalisation, so that the padding is
exactly 0 once normalised, the value inference pads with (``HBDNet.forward`` pads the normalised
crop with zeros). The crops are therefore float32 on the 0-255 scale (the authors padded with the
uint8 colour (124, 116, 104), a few thousandths off 0 once normalised), with ``rel_box`` (the footprint as crop fractions) and the crop's
own ground truth (IoF >= ``global_iof_thr``, 0.1 as the authors). Everything stays ``(C, H, W)``.

Images are returned as stored (band order of the file: RGB for PNG/JPEG), uint8, unpadded and
unnormalised: padding to the window size and normalising belong to the model's transform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import rasterio
import rasterio.io
import shapely
import torch
from torch import Tensor
from torch.utils.data import Dataset

from hbdnet.boxes.convention import obb_to_hbb, obb_to_poly
from hbdnet.data.dota import MIN_BOX_SIDE, DotaImage, fit_boxes
from hbdnet.data.raster import open_image, read_pyramid_window
from hbdnet.models.transform import PIXEL_MEAN
from hbdnet.pyramid import PlanWindow, context_crops, plan_pyramid

_EDGE_TOL = 1e-6  # px
_IOF_TOL = 1e-9


@dataclass(frozen=True)
class WindowConfig:
    window: int = 1024
    overlap: int = 200
    max_side: int = 1024  # the pyramid grows levels until the longer side fits this (plan_pyramid)
    iof_thr: float = 0.3
    min_length_local: float = 0.0  # level-0 px
    min_length_global: float = 15.0  # level px, for levels > 0 and for global crops
    filter_empty: bool = True
    empty_fraction: float = 0.0  # share of empty windows kept as negatives when filter_empty
    with_global_crops: int = 0  # coarser levels carried per window for IFF (the authors use 2)
    global_iof_thr: float = 0.1
    # RGB 0-255; the normalisation mean, i.e. 0 after normalising (as inference pads)
    pad_value: tuple[float, float, float] = PIXEL_MEAN
    resampling: Literal["exact", "overview"] = "exact"
    seed: int = 0  # picks the kept empty windows

    def __post_init__(self) -> None:
        if not 0.0 < self.iof_thr <= 1.0 or not 0.0 < self.global_iof_thr <= 1.0:
            raise ValueError("iof thresholds must be in (0, 1]")
        if not 0.0 <= self.empty_fraction <= 1.0:
            raise ValueError(f"empty_fraction must be in [0, 1], got {self.empty_fraction}")
        if self.with_global_crops < 0:
            raise ValueError("with_global_crops must be >= 0")

    def min_length(self, level: int) -> float:
        return self.min_length_local if level == 0 else self.min_length_global


@dataclass
class WindowTargets:
    boxes: Tensor  # (K, 5) float32 le90, window pixels
    truncated: Tensor  # (K,) bool
    source: Tensor  # (K,) int64, row of the image's boxes each one comes from

    def as_target(self) -> dict[str, Tensor]:
        # Copies, so that a consumer editing its target in place cannot corrupt the index.
        return {
            "boxes": self.boxes.clone(),
            "labels": torch.zeros(len(self.boxes), dtype=torch.int64),
            "truncated": self.truncated.clone(),
        }


def window_targets(
    boxes: Tensor,
    rect: tuple[float, float, float, float],
    iof_thr: float,
    min_length: float = 0.0,
) -> WindowTargets:
    """Ground truth of one window from ``(N, 5)`` boxes in level pixels.

    ``rect`` is the window ``(x0, y0, x1, y1)`` in level pixels; the result is in window pixels
    (origin at ``(x0, y0)``). See the module docstring for the rules.
    """
    x0, y0, x1, y1 = rect
    if len(boxes) == 0:
        return WindowTargets(
            torch.zeros((0, 5)), torch.zeros((0,), dtype=torch.bool), torch.zeros((0,), dtype=torch.int64)
        )
    b = boxes.double()
    hull = obb_to_hbb(b)
    overlaps = (hull[:, 0] < x1) & (hull[:, 2] > x0) & (hull[:, 1] < y1) & (hull[:, 3] > y0)
    # The tolerance keeps a box drawn exactly to the window edge whole (cos/sin of +-pi/2 is not 0).
    tol = _EDGE_TOL
    inside = (hull[:, 0] >= x0 - tol) & (hull[:, 2] <= x1 + tol)
    inside &= (hull[:, 1] >= y0 - tol) & (hull[:, 3] <= y1 + tol)
    cut_idx = torch.nonzero(overlaps & ~inside).flatten()
    in_idx = torch.nonzero(inside).flatten()

    kept_boxes = [b[in_idx]]
    kept_trunc = [torch.zeros(len(in_idx), dtype=torch.bool)]
    kept_src = [in_idx]
    if len(cut_idx):
        corners = obb_to_poly(b[cut_idx]).reshape(-1, 4, 2).numpy()
        inter = shapely.intersection(shapely.polygons(corners), shapely.box(x0, y0, x1, y1))
        area = shapely.area(inter)
        full = (b[cut_idx, 2] * b[cut_idx, 3]).numpy()
        iof = np.divide(area, full, out=np.zeros_like(area), where=full > 0)
        sel = np.nonzero((iof >= iof_thr) & (area > 0))[0]
        if len(sel):
            rings = [np.asarray(shapely.get_exterior_ring(g).coords)[:-1] for g in inter[sel]]
            k = max(len(r) for r in rings)
            # Repeating a vertex does not change a point set's minimum-area rectangle.
            padded = np.stack([np.concatenate([r, np.repeat(r[:1], k - len(r), axis=0)]) for r in rings])
            clipped = fit_boxes(torch.from_numpy(padded.reshape(len(sel), 2 * k)))
            kept_boxes.append(clipped)
            kept_trunc.append(torch.from_numpy(iof[sel] < 1.0 - _IOF_TOL))
            kept_src.append(cut_idx[torch.from_numpy(sel)])
    out = torch.cat(kept_boxes)
    trunc = torch.cat(kept_trunc)
    src = torch.cat(kept_src)
    out[:, 0] -= x0
    out[:, 1] -= y0
    ok = (out[:, 2] >= MIN_BOX_SIDE) & (out[:, 3] >= MIN_BOX_SIDE) & (out[:, 2:4].amax(1) >= min_length)
    order = torch.argsort(src[ok])  # keep the label file's order
    return WindowTargets(out[ok][order].float(), trunc[ok][order], src[ok][order])


@dataclass
class GlobalCrops:
    """Co-located crops of the ``n`` levels above a window, for inter-layer feature fusion."""

    images: Tensor  # (n, C, c, c) float32 0-255 (pixels as read, padding = pad_value)
    rel_boxes: Tensor  # (n, 4) float32: the window footprint (left, top, right, bottom) / c
    targets: list[dict[str, Tensor]]  # per crop: boxes (K, 5) in crop pixels, labels, truncated
    levels: tuple[int, ...]


@dataclass
class WindowSample:
    image: Tensor  # (C, H, W) uint8, the window as read (not padded)
    target: dict[str, Tensor]  # boxes (N, 5) le90 window px, labels (N,) int64, truncated (N,) bool
    meta: dict[str, Any]  # image_id, image_path, image_size, level, scale, col_off, row_off, width, height
    global_crops: GlobalCrops | None = None


@dataclass
class WindowBatch:
    images: list[Tensor]
    targets: list[dict[str, Tensor]]
    metas: list[dict[str, Any]]
    global_crops: list[GlobalCrops] | None = None


def collate_windows(samples: Sequence[WindowSample]) -> WindowBatch:
    """Lists, not stacks: windows of small images or top levels differ in size."""
    crops = [s.global_crops for s in samples]
    has = [c is not None for c in crops]
    if any(has) and not all(has):
        raise ValueError("a batch mixes samples with and without global crops")
    return WindowBatch(
        images=[s.image for s in samples],
        targets=[s.target for s in samples],
        metas=[s.meta for s in samples],
        global_crops=crops if all(has) and crops else None,  # type: ignore[arg-type]
    )


@dataclass
class _ImageInfo:
    height: int
    width: int
    bands: tuple[int, ...]  # bands to read; one band is repeated to three


@dataclass
class _Entry:
    image_index: int
    window: PlanWindow
    targets: WindowTargets = field(repr=False)


def _entry_order(e: _Entry) -> tuple[int, int, int, int]:
    return (e.image_index, e.window.level, e.window.row_off, e.window.col_off)


class WindowDataset(Dataset):
    """Windows of the given pyramid ``levels`` of every image, with their ground truth.

    ``levels``: e.g. ``[0]`` for the local stage, ``[1]`` or ``[1, 2, 3, 4]`` for global stages;
    a level an image does not have (the pyramid stops when the longer side fits ``max_side``)
    contributes no windows for that image. ``transform`` (e.g. :class:`hbdnet.data.augment.RandomFlip`)
    is applied to each :class:`WindowSample`.
    """

    def __init__(
        self,
        images: Sequence[DotaImage],
        levels: Sequence[int],
        config: WindowConfig = WindowConfig(),
        transform: Callable[[WindowSample], WindowSample] | None = None,
    ) -> None:
        self.images = list(images)
        self.levels = sorted(set(int(lv) for lv in levels))
        self.config = config
        self.transform = transform
        self.infos = [_read_info(img) for img in self.images]
        self.entries, self.spare = self._build_index()

    def _build_index(self) -> tuple[list[_Entry], list[_Entry]]:
        cfg = self.config
        full: list[_Entry] = []
        empty: list[_Entry] = []
        for i, (img, info) in enumerate(zip(self.images, self.infos)):
            plan = plan_pyramid(info.height, info.width, cfg.window, cfg.overlap, cfg.max_side, self.levels)
            for win in plan:
                tg = window_targets(
                    _to_level(img.boxes, win.scale),
                    _rect(win),
                    cfg.iof_thr,
                    cfg.min_length(win.level),
                )
                if len(tg.boxes):
                    full.append(_Entry(i, win, tg))
                elif _known_background(img, win):
                    empty.append(_Entry(i, win, tg))
        if not cfg.filter_empty:
            pick = set(range(len(empty)))
        else:
            n = round(cfg.empty_fraction * len(empty))
            rng = np.random.default_rng(cfg.seed)
            pick = set(rng.choice(len(empty), size=n, replace=False).tolist()) if n else set()
        entries = full + [e for j, e in enumerate(empty) if j in pick]
        entries.sort(key=_entry_order)
        spare = sorted((e for j, e in enumerate(empty) if j not in pick), key=_entry_order)
        return entries, spare

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> WindowSample:
        return self._load(self.entries[index])

    def spare_empty(self, index: int) -> WindowSample:
        """The ``index``-th empty window that the index skipped (``len(self.spare)`` of them)."""
        return self._load(self.spare[index])

    def _load(self, entry: _Entry) -> WindowSample:
        img, info, win = self.images[entry.image_index], self.infos[entry.image_index], entry.window
        cfg = self.config
        with _open(img) as ds:
            image = _pixels(img, read_pyramid_window(ds, win, info.bands, cfg.resampling))
            crops = self._global_crops(ds, img, info, win) if cfg.with_global_crops else None
        meta = {
            "image_id": img.image_id,
            "image_path": str(img.image_path),
            "image_size": (info.height, info.width),
            "level": win.level,
            "scale": win.scale,
            "col_off": win.col_off,
            "row_off": win.row_off,
            "width": win.width,
            "height": win.height,
        }
        sample = WindowSample(image, entry.targets.as_target(), meta, crops)
        return self.transform(sample) if self.transform is not None else sample

    def _global_crops(
        self, ds: rasterio.io.DatasetReader, img: DotaImage, info: _ImageInfo, win: PlanWindow
    ) -> GlobalCrops:
        cfg = self.config
        c = cfg.window
        images, rels, targets, levels = [], [], [], []
        for ctx in context_crops(win, info.height, info.width, cfg.with_global_crops, c):
            crop = ctx.window
            pixels = _pixels(img, read_pyramid_window(ds, crop, info.bands, cfg.resampling))
            canvas = torch.tensor(cfg.pad_value, dtype=torch.float32).view(3, 1, 1).repeat(1, c, c)
            canvas[:, : crop.height, : crop.width] = pixels
            images.append(canvas)
            rels.append(list(ctx.rel_box))
            tg = window_targets(
                _to_level(img.boxes, crop.scale), _rect(crop), cfg.global_iof_thr, cfg.min_length_global
            )
            targets.append(tg.as_target())
            levels.append(crop.level)
        return GlobalCrops(torch.stack(images), torch.tensor(rels, dtype=torch.float32), targets, tuple(levels))


def _to_level(boxes: Tensor, scale: int) -> Tensor:
    out = boxes.double().clone()
    out[:, :4] /= scale
    return out


def _rect(win: PlanWindow) -> tuple[float, float, float, float]:
    x0, y0 = float(win.col_off), float(win.row_off)
    return (x0, y0, x0 + win.width, y0 + win.height)


def _known_background(img: DotaImage, win: PlanWindow) -> bool:
    """A window without a box teaches "no bridge here" only where the labels say so (``background``)."""
    if img.background is None:
        return True
    s = win.scale
    x0, y0 = win.col_off * s, win.row_off * s
    footprint = shapely.box(x0, y0, x0 + win.width * s, y0 + win.height * s)
    return bool(shapely.covers(img.background, footprint))


def _open(img: DotaImage) -> AbstractContextManager:
    return img.opener() if img.opener is not None else open_image(img.image_path)


def _read_info(img: DotaImage) -> _ImageInfo:
    path = img.image_path
    with _open(img) as ds:
        if img.bands is not None:
            bands: tuple[int, ...] = img.bands
            if any(not 1 <= b <= ds.count for b in bands):
                raise ValueError(f"{path}: bands {list(bands)} asked, the image has {ds.count}")
        elif ds.count >= 3:
            bands = (1, 2, 3)
        elif ds.count == 1:
            bands = (1,)
        else:
            raise ValueError(f"{path}: expected 1 or >= 3 bands, got {ds.count}")
        if img.to_uint8 is None and any(ds.dtypes[b - 1] != "uint8" for b in bands):
            raise ValueError(f"{path}: training images must be uint8, got {ds.dtypes}")
        return _ImageInfo(ds.height, ds.width, bands)


def _pixels(img: DotaImage, data: np.ndarray) -> Tensor:
    """The window as the model gets it: three uint8 bands."""
    return _as_three_bands(img.to_uint8(data) if img.to_uint8 is not None else data)


def _as_three_bands(pixels: np.ndarray) -> Tensor:
    t = torch.from_numpy(np.ascontiguousarray(pixels))
    return t.expand(3, -1, -1).contiguous() if t.shape[0] == 1 else t
