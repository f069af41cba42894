"""The one convention for oriented boxes in hbdnet, and exact conversions at the edges.

Pixel space: x to the right, y down. An oriented box is a row ``(cx, cy, w, h, theta)``:

* ``theta`` is in radians, measured from the +x axis towards +y (clockwise on screen);
* ``w`` is the extent along the unit vector ``(cos theta, sin theta)``, ``h`` along
  ``(-sin theta, cos theta)``;
* the corners are ``c - u - v, c + u - v, c + u + v, c - u + v`` with
  ``u = (w / 2)(cos theta, sin theta)`` and ``v = (h / 2)(-sin theta, cos theta)``.

The *internal* form is mmrotate's ``le90``: ``w >= h`` and ``theta`` in ``[-pi/2, pi/2)``, so ``w``
is the bridge's length and ``theta`` the direction of its long axis. Every box is the same
rectangle in all forms; only the row that describes it changes:

* ``oc`` (the authors' checkpoints, OpenCV's ``minAreaRect``): ``theta`` in ``(0, pi/2]``, ``w`` and
  ``h`` unordered.
* polygons: 4 corners ``(x1, y1, ..., x4, y4)`` in the order above (DOTA order for boxes made here).
* horizontal hulls: ``(x1, y1, x2, y2)``, the axis-aligned box around the corners.

All functions take tensors of shape ``(..., 5)`` / ``(..., 8)`` / ``(..., 4)`` and are batched.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

HALF_PI = math.pi / 2


def regularize_le90(boxes: Tensor) -> Tensor:
    """Rewrite any ``(cx, cy, w, h, theta)`` rows in ``le90`` form (``w >= h``, theta in [-pi/2, pi/2))."""
    cx, cy, w, h, t = boxes.unbind(-1)
    swap = w < h
    w2 = torch.where(swap, h, w)
    h2 = torch.where(swap, w, h)
    t = torch.where(swap, t + HALF_PI, t)
    t = torch.remainder(t + HALF_PI, math.pi) - HALF_PI
    # remainder can round up to exactly pi for t just below -pi/2; keep the interval half-open.
    t = torch.where(t >= HALF_PI, t - math.pi, t)
    return torch.stack([cx, cy, w2, h2, t], dim=-1)


def le90_to_oc(boxes: Tensor) -> Tensor:
    """Internal boxes to the authors' ``oc`` form: theta in (0, pi/2], w/h swapped on odd quarter turns."""
    cx, cy, w, h, t = boxes.unbind(-1)
    # Smallest k with t + k*pi/2 in (0, pi/2]; each quarter turn swaps w and h.
    k = torch.ceil(-t / HALF_PI)
    t_oc = t + k * HALF_PI
    # Rounding can land t_oc a hair outside (0, pi/2]; fold it back.
    over = t_oc > HALF_PI
    k = torch.where(over, k - 1, k)
    t_oc = torch.where(over, t_oc - HALF_PI, t_oc)
    under = t_oc <= 0
    k = torch.where(under, k + 1, k)
    t_oc = torch.where(under, t_oc + HALF_PI, t_oc)
    odd = torch.remainder(k, 2) == 1
    return torch.stack([cx, cy, torch.where(odd, h, w), torch.where(odd, w, h), t_oc], dim=-1)


def oc_to_le90(boxes: Tensor) -> Tensor:
    """``oc`` boxes (or any representation) to the internal ``le90`` form."""
    return regularize_le90(boxes)


def obb_to_poly(boxes: Tensor) -> Tensor:
    """``(..., 5)`` boxes in any form to ``(..., 8)`` corners ``x1, y1, ..., x4, y4``."""
    cx, cy, w, h, t = boxes.unbind(-1)
    cos, sin = torch.cos(t), torch.sin(t)
    ux, uy = w / 2 * cos, w / 2 * sin
    vx, vy = -h / 2 * sin, h / 2 * cos
    pts = [
        (cx - ux - vx, cy - uy - vy),
        (cx + ux - vx, cy + uy - vy),
        (cx + ux + vx, cy + uy + vy),
        (cx - ux + vx, cy - uy + vy),
    ]
    return torch.stack([c for p in pts for c in p], dim=-1)


def obb_to_hbb(boxes: Tensor) -> Tensor:
    """Axis-aligned hull ``(x1, y1, x2, y2)`` of oriented boxes."""
    cx, cy, w, h, t = boxes.unbind(-1)
    cos, sin = torch.cos(t).abs(), torch.sin(t).abs()
    half_x = (w * cos + h * sin) / 2
    half_y = (w * sin + h * cos) / 2
    return torch.stack([cx - half_x, cy - half_y, cx + half_x, cy + half_y], dim=-1)


def hbb_to_obb(boxes: Tensor) -> Tensor:
    """Axis-aligned ``(x1, y1, x2, y2)`` to internal oriented boxes (theta 0, or -pi/2 when taller)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    zeros = torch.zeros_like(x1)
    obb = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, zeros], dim=-1)
    return regularize_le90(obb)


def poly_to_obb(polys: Tensor) -> Tensor:
    """Minimum-area rectangles around point sets, in ``le90`` form.

    ``polys`` is ``(..., 2K)`` (K points, usually 4). The minimum-area enclosing rectangle has a side
    collinear with an edge of the convex hull, and every hull edge joins two of the points, so trying
    the direction of every point pair is exact without building the hull.
    """
    pts = polys.reshape(*polys.shape[:-1], -1, 2)  # (..., K, 2)
    k = pts.shape[-2]
    i, j = torch.triu_indices(k, k, offset=1, device=polys.device)
    d = pts[..., j, :] - pts[..., i, :]  # (..., P, 2) candidate edge directions
    theta = torch.atan2(d[..., 1], d[..., 0])
    cos, sin = torch.cos(theta), torch.sin(theta)  # (..., P)
    # Project all points on each candidate axis and its normal.
    px = pts[..., None, :, 0]  # (..., 1, K)
    py = pts[..., None, :, 1]
    along = px * cos[..., None] + py * sin[..., None]  # (..., P, K)
    across = -px * sin[..., None] + py * cos[..., None]
    a_min, a_max = along.amin(-1), along.amax(-1)
    c_min, c_max = across.amin(-1), across.amax(-1)
    area = (a_max - a_min) * (c_max - c_min)
    # A coincident pair gives a zero direction; atan2(0, 0) = 0 is still a valid axis, so no masking.
    best = area.argmin(-1, keepdim=True)

    def pick(x: Tensor) -> Tensor:
        return x.gather(-1, best).squeeze(-1)

    a_mid, c_mid = (pick(a_min) + pick(a_max)) / 2, (pick(c_min) + pick(c_max)) / 2
    c, s = pick(cos), pick(sin)
    cx = a_mid * c - c_mid * s
    cy = a_mid * s + c_mid * c
    w = pick(a_max) - pick(a_min)
    h = pick(c_max) - pick(c_min)
    return regularize_le90(torch.stack([cx, cy, w, h, pick(theta)], dim=-1))


def box_area(boxes: Tensor) -> Tensor:
    return boxes[..., 2] * boxes[..., 3]
