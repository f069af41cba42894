"""Synthetic coarse-level windows: real bridges pasted at several scales into real backgrounds.

A small training set (NWPU VHR-10: 30 images of about 600 x 900 px) has almost no coarse pyramid
levels: an image that fits one window has no level 1 at all, so the global detector would see a
handful of windows and no long bridge in context. Each synthetic window stands for one window of a
coarse level of a large scene:

* the background is a 2 x 2 mosaic of random crops of the training images, each shrunk by a random
  factor (``background_scale``: a coarser ground resolution), with the bridges they contain and
  their labels (cut by the window rule of :func:`hbdnet.data.windows.window_targets`);
* 1 to ``max_bridges`` real bridges are then pasted, each as an axis-aligned crop of its image around
  the bridge with a margin of context (water, banks, roads), resized so that the bridge's length is
  drawn from ``length_range`` (log-uniform, at most ``max_upscale`` times its real size), at a
  free place: a paste never covers another paste nor part of a labelled bridge, so every label stays
  whole and exact (a background bridge hidden whole under a paste loses its label). The paste's
  edges are feathered into the background; every other bridge the crop contains is labelled too.

Labels follow the pasted pixels exactly: a crop's boxes are moved by the same scale and offset as
its pixels (:func:`hbdnet.data.augment.scale_boxes`), the convention being that the point ``(x, y)``
of the source goes to ``(f x + dx, f y + dy)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from hbdnet.boxes.convention import obb_to_hbb
from hbdnet.data.augment import scale_boxes, scale_image
from hbdnet.data.dota import DotaImage
from hbdnet.data.raster import open_image
from hbdnet.data.windows import WindowSample, window_targets


@dataclass(frozen=True)
class SyntheticConfig:
    size: int = 1024  # window side (px at the level)
    level: int = 1  # the pyramid level the windows stand for (meta only: the detector that learns)
    background_scale: tuple[float, float] = (0.3, 0.8)
    max_bridges: int = 3
    length_range: tuple[float, float] = (150.0, 900.0)  # pasted bridge length, px
    max_upscale: float = 2.5  # a bridge is enlarged at most this much (blur)
    margin: float = 0.35  # context around a pasted bridge, as a share of its length (at least 24 px)
    feather: int = 8  # px of blending at a paste's edges
    iof_thr: float = 0.3
    min_length: float = 15.0  # labels shorter than this at the level are dropped (as global windows)


def _read_rgb(path) -> Tensor:
    with open_image(path) as ds:
        bands = (1, 2, 3) if ds.count >= 3 else (1,)
        pixels = torch.from_numpy(np.ascontiguousarray(ds.read(list(bands))))
    return pixels.expand(3, -1, -1).contiguous() if pixels.shape[0] == 1 else pixels


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _randint(g: torch.Generator, n: int) -> int:
    return int(torch.randint(max(1, n), (), generator=g))


def _empty_target() -> dict[str, Tensor]:
    return {"boxes": torch.zeros((0, 5)), "labels": torch.zeros(0, dtype=torch.int64),
            "truncated": torch.zeros(0, dtype=torch.bool)}


def _cut(boxes: Tensor, rect, iof_thr: float, min_length: float, prev_trunc: Tensor | None = None):
    tg = window_targets(boxes, rect, iof_thr, min_length)
    trunc = tg.truncated if prev_trunc is None else tg.truncated | prev_trunc[tg.source]
    return tg.boxes, trunc


def _overlaps(rect, others) -> bool:
    x0, y0, x1, y1 = rect
    return any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in others)


class SyntheticScenes:
    """``count`` synthetic windows per epoch; item ``i`` drawn from the generator it is given."""

    def __init__(self, images: Sequence[DotaImage], count: int, config: SyntheticConfig = SyntheticConfig()):
        self.images = list(images)
        self.count = count
        self.config = config
        # (image index, box row) of every bridge that can be pasted
        self.bridges = [(i, j) for i, img in enumerate(self.images) for j in range(len(img.boxes))]
        if count and not self.bridges:
            raise ValueError("synthetic scenes need labelled bridges to paste")
        self._cache: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return self.count

    def _pixels(self, i: int) -> Tensor:
        if i not in self._cache:
            self._cache[i] = _read_rgb(self.images[i].image_path)
        return self._cache[i]

    def sample(self, index: int, g: torch.Generator) -> WindowSample:
        cfg = self.config
        s = cfg.size
        canvas = torch.zeros((3, s, s), dtype=torch.uint8)
        boxes: list[Tensor] = []
        truncs: list[Tensor] = []
        # 1. the mosaic of shrunk real backgrounds, with their bridges
        sx = round(s * _uniform(g, 0.3, 0.7))
        sy = round(s * _uniform(g, 0.3, 0.7))
        for tx0, ty0, tx1, ty1 in ((0, 0, sx, sy), (sx, 0, s, sy), (0, sy, sx, s), (sx, sy, s, s)):
            tw, th = tx1 - tx0, ty1 - ty0
            i = _randint(g, len(self.images))
            pixels = self._pixels(i)
            h, w = pixels.shape[-2:]
            f = max(_uniform(g, *cfg.background_scale), tw / w, th / h)
            img = scale_image(pixels, f)
            ih, iw = img.shape[-2:]
            tw, th = min(tw, iw), min(th, ih)
            cx0, cy0 = _randint(g, iw - tw + 1), _randint(g, ih - th + 1)
            canvas[:, ty0:ty0 + th, tx0:tx0 + tw] = img[:, cy0:cy0 + th, cx0:cx0 + tw]
            b, t = _cut(scale_boxes(self.images[i].boxes, f), (cx0, cy0, cx0 + tw, cy0 + th),
                        cfg.iof_thr, cfg.min_length)
            b = b.clone()
            b[:, 0] += tx0
            b[:, 1] += ty0
            boxes.append(b)
            truncs.append(t)
        background = torch.cat(boxes)
        background_trunc = torch.cat(truncs)
        hulls = [tuple(r) for r in obb_to_hbb(background.double()).tolist()]
        covered = torch.zeros(len(background), dtype=torch.bool)
        # 2. real bridges pasted at a free place, at a drawn length
        n = 1 + _randint(g, cfg.max_bridges)
        pasted_boxes: list[Tensor] = []
        pasted_truncs: list[Tensor] = []
        pasted_rects: list[tuple] = []
        for _ in range(n * 3):
            if len(pasted_rects) == n:
                break
            i, j = self.bridges[_randint(g, len(self.bridges))]
            got = self._paste(canvas, i, j, g, hulls, covered, pasted_rects)
            if got is None:
                continue
            b, t, rect = got
            pasted_boxes.append(b)
            pasted_truncs.append(t)
            pasted_rects.append(rect)
        pasted = len(pasted_rects)
        all_boxes = torch.cat([background[~covered], *pasted_boxes])
        trunc = torch.cat([background_trunc[~covered], *pasted_truncs])
        target = {"boxes": all_boxes.float(), "labels": torch.zeros(len(all_boxes), dtype=torch.int64),
                  "truncated": trunc}
        level = cfg.level
        meta = {"image_id": f"synthetic_{index}", "image_path": "", "image_size": (s << level, s << level),
                "level": level, "scale": 2**level, "col_off": 0, "row_off": 0, "width": s, "height": s,
                "synthetic": True, "pasted": pasted}
        return WindowSample(canvas, target, meta)

    def _paste(self, canvas: Tensor, i: int, j: int, g: torch.Generator, hulls: list, covered: Tensor,
               pasted: list):
        """Paste bridge ``j`` of image ``i``; background bridges it covers whole are marked ``covered``."""
        cfg = self.config
        s = canvas.shape[-1]
        image = self.images[i]
        box = image.boxes[j]
        length = float(box[2])
        lo, hi = cfg.length_range
        target_len = math.exp(_uniform(g, math.log(lo), math.log(hi)))
        f = min(target_len / length, cfg.max_upscale)
        pixels = self._pixels(i)
        h, w = pixels.shape[-2:]
        m = max(24.0, cfg.margin * length)
        x0, y0, x1, y1 = obb_to_hbb(box[None].double())[0].tolist()
        x0, y0 = max(0, math.floor(x0 - m)), max(0, math.floor(y0 - m))
        x1, y1 = min(w, math.ceil(x1 + m)), min(h, math.ceil(y1 + m))
        # the paste must fit the canvas
        f = min(f, (s - 2) / (x1 - x0), (s - 2) / (y1 - y0))
        if f * length < cfg.min_length:
            return None
        crop = pixels[:, y0:y1, x0:x1]
        ph, pw = math.floor((y1 - y0) * f), math.floor((x1 - x0) * f)  # scale_image's size
        # every bridge of the crop, in patch pixels (the crop is cut with the window rule)
        b, t = _cut(image.boxes, (x0, y0, x1, y1), cfg.iof_thr, 0.0)
        b = scale_boxes(b, f)
        keep = b[:, 2] >= cfg.min_length
        if not bool(keep.any()):
            return None
        fw = cfg.feather
        for _ in range(20):
            px, py = _randint(g, s - pw + 1), _randint(g, s - ph + 1)
            rect = (px, py, px + pw, py + ph)
            if _overlaps(rect, pasted):
                continue
            # a background bridge must be either clear of the paste or hidden whole under its opaque part
            hit = [k for k, hb in enumerate(hulls) if not covered[k] and _overlaps(rect, [hb])]
            opaque = (px + fw, py + fw, px + pw - fw, py + ph - fw)
            if all(_inside(hulls[k], opaque) for k in hit):
                break
        else:
            return None
        covered[hit] = True
        patch = scale_image(crop, f)
        alpha = _feather(ph, pw, cfg.feather)
        region = canvas[:, py:py + ph, px:px + pw].float()
        canvas[:, py:py + ph, px:px + pw] = (alpha * patch.float() + (1 - alpha) * region).round().to(torch.uint8)
        b = b[keep].clone()
        b[:, 0] += px
        b[:, 1] += py
        return b, t[keep], rect


def _inside(box, rect) -> bool:
    return box[0] >= rect[0] and box[1] >= rect[1] and box[2] <= rect[2] and box[3] <= rect[3]


def _feather(h: int, w: int, width: int) -> Tensor:
    """1 inside, ramping to 0 over ``width`` px at the edges (never below 1 beyond ``width``)."""
    if width <= 0:
        return torch.ones((1, h, w))
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    dy = torch.minimum(ys, h - ys).clamp(max=width) / width
    dx = torch.minimum(xs, w - xs).clamp(max=width) / width
    return (dy[:, None] * dx[None, :])[None]
