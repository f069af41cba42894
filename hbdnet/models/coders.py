"""Box coders of Oriented R-CNN, with mmrotate 0.3's exact arithmetic.

The authors trained in mmrotate's ``oc`` convention, and two things there depend on *which* of the
equivalent ``(w, h, theta)`` rows describes a rectangle: the orientation of the RoIAlign grid (the
7x7 bins run along ``w``) and the second-stage regression targets. So the RPN decode below returns
exactly the rows mmrotate's ``poly2obb_oc`` produces (theta in ``[0, pi/2)``, ``w`` along the edge
from the top vertex to the right vertex), and the second-stage coder works on ``oc`` rows.

* ``MidpointOffsetCoder``: horizontal anchor -> oriented proposal (6 deltas).
* ``DeltaXYWHAOBBoxCoder``: oriented proposal -> oriented box (5 deltas, ``proj_xy``, ``edge_swap``).
* ``DeltaXYWHBBoxCoder``: horizontal box -> horizontal box (4 deltas), for the HBB variant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from hbdnet.boxes.convention import obb_to_hbb, obb_to_poly

HALF_PI = math.pi / 2
DEFAULT_WH_RATIO_CLIP = 16 / 1000


def poly_to_obb_oc(polys: Tensor) -> Tensor:
    """``(N, 8)`` rectangles (corners in order) to ``oc`` rows exactly as mmrotate's ``poly2obb_oc``.

    Unlike ``convention.poly_to_obb`` (a minimum-area fit that returns ``le90``), this reads the
    rectangle from its corner order: ``w`` is the edge p0->p1 and theta its direction, folded into
    ``[0, pi/2)`` with ``w``/``h`` swapped on odd quarter turns. The centre is the corner mean.
    """
    pts = polys.reshape(-1, 4, 2)
    centre = pts.mean(dim=1)
    w_edge = torch.linalg.vector_norm(pts[:, 0] - pts[:, 1], dim=-1)
    h_edge = torch.linalg.vector_norm(pts[:, 1] - pts[:, 2], dim=-1)
    # Angle of the edge p0->p1 minus pi/2 (atan2 of the edge vector turned by -90 degrees).
    raw = torch.atan2(-(pts[:, 1, 0] - pts[:, 0, 0]), pts[:, 1, 1] - pts[:, 0, 1])
    even = torch.remainder(torch.floor(raw / HALF_PI), 2) == 0
    w = torch.where(even, h_edge, w_edge)
    h = torch.where(even, w_edge, h_edge)
    theta = torch.remainder(raw, HALF_PI)
    return torch.stack([centre[:, 0], centre[:, 1], w, h, theta], dim=-1)


def _xyxy_to_cxcywh(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return (x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1


class MidpointOffsetCoder:
    """Oriented R-CNN's RPN coder: ``(dx, dy, dw, dh, da, db)`` from a horizontal anchor to an OBB.

    ``(dx, dy, dw, dh)`` are the usual deltas to the target's horizontal hull; ``da`` and ``db`` are
    the offsets of the hull's top and right contact points from the hull centre, relative to the hull
    size. Decoding rebuilds the parallelogram, rescales its diagonals to equal length (a rectangle)
    and reads it with ``poly_to_obb_oc``.
    """

    def __init__(
        self,
        means: Sequence[float] = (0.0,) * 6,
        stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0, 0.5, 0.5),
        wh_ratio_clip: float = DEFAULT_WH_RATIO_CLIP,
    ):
        self.means = tuple(means)
        self.stds = tuple(stds)
        self.max_ratio = abs(math.log(wh_ratio_clip))

    def encode(self, anchors: Tensor, gt_oc: Tensor) -> Tensor:
        """``(N, 4)`` anchors ``x1, y1, x2, y2`` and ``(N, 5)`` target rows in ``oc`` form -> ``(N, 6)``."""
        anchors, gt_oc = anchors.float(), gt_oc.float()
        px, py, pw, ph = _xyxy_to_cxcywh(anchors)
        gx, gy, gw, gh = _xyxy_to_cxcywh(obb_to_hbb(gt_oc))
        poly = obb_to_poly(gt_oc)
        xs, ys = poly[:, 0::2], poly[:, 1::2]
        # x of the top contact point (max over the corners within 0.1 px of the top; two corners
        # tie there for an axis-aligned box) and y of the right contact point, as mmrotate does.
        top = (ys - ys.amin(dim=1, keepdim=True)).abs() <= 0.1
        right = (xs - xs.amax(dim=1, keepdim=True)).abs() <= 0.1
        ga = torch.where(top, xs, torch.full_like(xs, -math.inf)).amax(dim=1)
        gb = torch.where(right, ys, torch.full_like(ys, -math.inf)).amax(dim=1)
        deltas = torch.stack(
            [(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph), (ga - gx) / gw, (gb - gy) / gh],
            dim=-1,
        )
        return (deltas - deltas.new_tensor(self.means)) / deltas.new_tensor(self.stds)

    def decode(self, anchors: Tensor, deltas: Tensor) -> Tensor:
        """``(N, 4)`` anchors and ``(N, 6)`` deltas -> ``(N, 5)`` boxes as ``oc`` rows (theta in [0, pi/2))."""
        d = deltas * deltas.new_tensor(self.stds) + deltas.new_tensor(self.means)
        dx, dy, dw, dh, da, db = d.unbind(-1)
        dw = dw.clamp(-self.max_ratio, self.max_ratio)
        dh = dh.clamp(-self.max_ratio, self.max_ratio)
        px, py, pw, ph = _xyxy_to_cxcywh(anchors)
        gw, gh = pw * dw.exp(), ph * dh.exp()
        gx, gy = px + pw * dx, py + ph * dy
        x1, y1, x2, y2 = gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5
        da, db = da.clamp(-0.5, 0.5), db.clamp(-0.5, 0.5)
        ga, gb = gx + da * gw, gy + db * gh
        # Parallelogram: top, right, bottom, left contact points.
        poly = torch.stack([ga, y1, x2, gb, 2 * gx - ga, y2, x1, 2 * gy - gb], dim=-1)
        centre = torch.stack([gx, gy], dim=-1).repeat(1, 4)
        rel = (poly - centre).reshape(-1, 4, 2)
        diag = torch.linalg.vector_norm(rel, dim=-1)  # (N, 4)
        scale = diag.amax(dim=-1, keepdim=True) / diag
        rect = (rel * scale[..., None]).reshape(-1, 8) + centre
        return poly_to_obb_oc(rect)


class DeltaXYWHAOBBoxCoder:
    """Second-stage coder ``(dx, dy, dw, dh, da)`` between ``oc`` rows, with ``proj_xy`` and ``edge_swap``.

    * ``dx, dy`` are the centre offset projected on the proposal's axes, over its ``w`` and ``h``.
    * The target is taken as is or with ``w``/``h`` swapped and theta + pi/2, whichever turns less
      from the proposal (``oc`` does not wrap angles, so the turn is the plain difference).
    * Decoding returns ``w >= h`` (theta + pi/2 when the decoded ``h`` is longer), theta unwrapped.
    """

    def __init__(
        self,
        means: Sequence[float] = (0.0,) * 5,
        stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2, 0.1),
        wh_ratio_clip: float = DEFAULT_WH_RATIO_CLIP,
    ):
        self.means = tuple(means)
        self.stds = tuple(stds)
        self.max_ratio = abs(math.log(wh_ratio_clip))

    def encode(self, proposals: Tensor, gt: Tensor) -> Tensor:
        """``(N, 5)`` proposals and matched targets (``oc`` rows) -> ``(N, 5)`` normalised deltas."""
        px, py, pw, ph, pa = proposals.float().unbind(-1)
        gx, gy, gw, gh, ga = gt.float().unbind(-1)
        cos, sin = torch.cos(pa), torch.sin(pa)
        dx = (cos * (gx - px) + sin * (gy - py)) / pw
        dy = (-sin * (gx - px) + cos * (gy - py)) / ph
        turn1 = ga - pa
        turn2 = ga - pa + HALF_PI
        keep = turn1.abs() < turn2.abs()
        w_t = torch.where(keep, gw, gh)
        h_t = torch.where(keep, gh, gw)
        da = torch.where(keep, turn1, turn2)
        deltas = torch.stack([dx, dy, torch.log(w_t / pw), torch.log(h_t / ph), da], dim=-1)
        return (deltas - deltas.new_tensor(self.means)) / deltas.new_tensor(self.stds)

    def decode(self, proposals: Tensor, deltas: Tensor, max_shape: tuple[int, int] | None = None) -> Tensor:
        """``(N, 5)`` proposals and deltas -> ``(N, 5)`` boxes with ``w >= h``.

        ``max_shape = (H, W)`` clamps the centres to ``[0, W - 1] x [0, H - 1]`` as mmrotate does at test.
        """
        d = deltas * deltas.new_tensor(self.stds) + deltas.new_tensor(self.means)
        dx, dy, dw, dh, da = d.unbind(-1)
        px, py, pw, ph, pa = proposals.unbind(-1)
        dw = dw.clamp(-self.max_ratio, self.max_ratio)
        dh = dh.clamp(-self.max_ratio, self.max_ratio)
        gw, gh = pw * dw.exp(), ph * dh.exp()
        cos, sin = torch.cos(pa), torch.sin(pa)
        gx = dx * pw * cos - dy * ph * sin + px
        gy = dx * pw * sin + dy * ph * cos + py
        ga = pa + da
        if max_shape is not None:
            gx = gx.clamp(0, max_shape[1] - 1)
            gy = gy.clamp(0, max_shape[0] - 1)
        wider = gw > gh
        return torch.stack(
            [gx, gy, torch.where(wider, gw, gh), torch.where(wider, gh, gw), torch.where(wider, ga, ga + HALF_PI)],
            dim=-1,
        )


class DeltaXYWHBBoxCoder:
    """mmdet's standard horizontal coder (Faster R-CNN), for the HBB variant of the RoI head."""

    def __init__(
        self,
        means: Sequence[float] = (0.0,) * 4,
        stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
        wh_ratio_clip: float = DEFAULT_WH_RATIO_CLIP,
    ):
        self.means = tuple(means)
        self.stds = tuple(stds)
        self.max_ratio = abs(math.log(wh_ratio_clip))

    def encode(self, boxes: Tensor, gt: Tensor) -> Tensor:
        """``(N, 4)`` ``x1, y1, x2, y2`` boxes and targets -> ``(N, 4)`` normalised deltas."""
        px, py, pw, ph = _xyxy_to_cxcywh(boxes.float())
        gx, gy, gw, gh = _xyxy_to_cxcywh(gt.float())
        deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
        return (deltas - deltas.new_tensor(self.means)) / deltas.new_tensor(self.stds)

    def decode(self, boxes: Tensor, deltas: Tensor, max_shape: tuple[int, int] | None = None) -> Tensor:
        """Inverse of ``encode``; ``max_shape = (H, W)`` clips corners to ``[0, W] x [0, H]``."""
        d = deltas * deltas.new_tensor(self.stds) + deltas.new_tensor(self.means)
        dx, dy, dw, dh = d.unbind(-1)
        dw = dw.clamp(-self.max_ratio, self.max_ratio)
        dh = dh.clamp(-self.max_ratio, self.max_ratio)
        px, py, pw, ph = _xyxy_to_cxcywh(boxes)
        gw, gh = pw * dw.exp(), ph * dh.exp()
        gx, gy = px + pw * dx, py + ph * dy
        out = torch.stack([gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5], dim=-1)
        if max_shape is not None:
            h, w = max_shape
            out = torch.stack(
                [out[:, 0].clamp(0, w), out[:, 1].clamp(0, h), out[:, 2].clamp(0, w), out[:, 3].clamp(0, h)], dim=-1
            )
        return out
