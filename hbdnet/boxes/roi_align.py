"""Rotated RoIAlign in plain PyTorch, with the semantics of mmcv's ``RoIAlignRotated``.

mmcv's kernel (``roi_align_rotated_cuda_kernel.cuh`` / ``pytorch/cpu/roi_align_rotated.cpp``, taken
from detectron2) does, for each RoI ``(b, cx, cy, w, h, theta)`` given in image pixels:

* scale the RoI to the feature map: ``cx*s - o, cy*s - o, w*s, h*s`` with ``o = 0.5`` when
  ``aligned`` (feature index ``j`` is the centre of the cell ``[j, j+1)``, so continuous coordinate
  ``c`` lies between indices ``floor(c - 0.5)`` and ``ceil(c - 0.5)``) and ``o = 0`` otherwise;
  without ``aligned`` it also clamps ``w`` and ``h`` to at least 1 (legacy behaviour);
* split the RoI into ``oh x ow`` bins and each bin into ``gh x gw`` sample points at the sub-cell
  centres, with ``gh = sampling_ratio`` or, when ``sampling_ratio <= 0``, ``ceil(h*s / oh)`` (same
  for ``gw``); a RoI whose adaptive grid is empty (zero size) pools to zeros;
* map the local offsets ``(xx, yy)`` (``xx`` along the bin columns, ``yy`` along the rows) to
  ``x = cx' + xx*cos(a) + yy*sin(a)``, ``y = cy' - xx*sin(a) + yy*cos(a)`` with ``a = -theta`` when
  ``clockwise`` and ``a = theta`` otherwise;
* read each point by bilinear interpolation with these border rules: 0 when ``y < -1``,
  ``y > H``, ``x < -1`` or ``x > W``; otherwise a negative coordinate is clamped to 0 and a
  coordinate at or past the last index ``H - 1`` (``W - 1``) takes the last row (column) whole, so a
  point up to one cell outside the map reads the edge pixel rather than fading to zero;
* average the ``gh * gw`` samples of each bin.

In hbdnet's box convention (see :mod:`hbdnet.boxes.convention`) with ``clockwise=True`` this means
``x = cx' + xx*cos(theta) - yy*sin(theta)``, ``y = cy' + xx*sin(theta) + yy*cos(theta)``: output
column index grows along ``(cos theta, sin theta)`` (the ``w`` axis), output row index along
``(-sin theta, cos theta)`` (the ``h`` axis), and the bins tile exactly the rectangle whose corners
``obb_to_poly`` returns: bin ``[0, 0]`` sits in the corner of its first point, ``[0, ow-1]`` of the
second, ``[oh-1, ow-1]`` of the third. HBD-Net uses ``clockwise=True`` and ``sampling_ratio=2``.

The pooling itself is one ``F.embedding_bag``: every output bin is a bag of ``gh * gw * 4``
feature-map rows (the four bilinear neighbours of each sample) summed with per-sample weights
(bilinear weight / sample count). That gathers and reduces without materialising a
``(samples, C)`` tensor, runs the same on CPU and CUDA, and autograd gives the gradient with respect
to the features (the RoIs get no gradient, as in mmcv). The gather table is the map in NHWC
order: for ``channels_last`` features it is a free view, otherwise each call makes one NHWC copy of
the map, which on CPU costs more than the pooling itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Upper bound on the gathered feature-row indices handled in one embedding_bag call; it only
# matters for adaptive sampling of very large RoIs, where the grid per bin can reach dozens squared.
_MAX_INDICES_PER_CHUNK = 1 << 22


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    oh, ow = size
    return int(oh), int(ow)


def _scaled_rois(
    rois: Tensor, spatial_scale: float, aligned: bool, clockwise: bool, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """RoIs in feature-map coordinates: centre (already shifted), size, and cos/sin of mmcv's angle."""
    r = rois.to(dtype)
    offset = 0.5 if aligned else 0.0
    cx = r[:, 1] * spatial_scale - offset
    cy = r[:, 2] * spatial_scale - offset
    w = r[:, 3] * spatial_scale
    h = r[:, 4] * spatial_scale
    if not aligned:
        w = w.clamp(min=1.0)
        h = h.clamp(min=1.0)
    theta = -r[:, 5] if clockwise else r[:, 5]
    return cx, cy, w, h, torch.cos(theta), torch.sin(theta)


def _bilinear_taps(y: Tensor, x: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """mmcv's bilinear rule as four (row, col, weight) taps per point; taps outside get weight 0.

    Returns ``rows, cols`` (long) and ``weights`` of shape ``(*y.shape, 4)``, taps ordered
    (low, low), (low, high), (high, low), (high, high) in (row, col).
    """
    inside = (y >= -1.0) & (y <= height) & (x >= -1.0) & (x <= width)
    y = y.clamp(min=0.0)
    x = x.clamp(min=0.0)
    y0 = y.floor()
    x0 = x.floor()
    ly, lx = y - y0, x - x0
    hy, hx = 1.0 - ly, 1.0 - lx
    # At or past the last row (column) the kernel reads that row alone with full weight. Clamping
    # both taps to it does the same: its two weights then add up to 1 on the same row.
    y_low = y0.clamp(max=height - 1).long()
    x_low = x0.clamp(max=width - 1).long()
    y_high = (y_low + 1).clamp(max=height - 1)
    x_high = (x_low + 1).clamp(max=width - 1)
    weights = torch.stack([hy * hx, hy * lx, ly * hx, ly * lx], dim=-1) * inside.unsqueeze(-1)
    rows = torch.stack([y_low, y_low, y_high, y_high], dim=-1)
    cols = torch.stack([x_low, x_high, x_low, x_high], dim=-1)
    return rows, cols, weights


def _pool_fixed_grid(
    table: Tensor,
    rois: Tensor,
    geometry: tuple[Tensor, ...],
    out_hw: tuple[int, int],
    grid_hw: tuple[int, int],
    map_hw: tuple[int, int],
) -> Tensor:
    """Pool RoIs that share one sampling grid ``gh x gw``; returns ``(K, oh, ow, C)``.

    ``table`` is the feature map as rows ``(B * H * W, C)``; ``geometry`` is ``_scaled_rois``'s
    output restricted to these RoIs.
    """
    cx, cy, w, h, cos, sin = geometry
    oh, ow = out_hw
    gh, gw = grid_hw
    height, width = map_hw
    k = rois.shape[0]
    dtype, device = cx.dtype, cx.device

    bin_h = h / oh
    bin_w = w / ow
    ph = torch.arange(oh, device=device, dtype=dtype)
    pw = torch.arange(ow, device=device, dtype=dtype)
    iy = torch.arange(gh, device=device, dtype=dtype) + 0.5
    ix = torch.arange(gw, device=device, dtype=dtype) + 0.5
    # Offsets from the RoI centre, evaluated in the kernel's order of operations:
    # start + p * bin + (i + 0.5) * bin / grid. Shapes broadcast to (K, oh, ow, gh, gw).
    yy = (
        (-h / 2.0)[:, None, None]
        + ph[None, :, None] * bin_h[:, None, None]
        + iy[None, None, :] * bin_h[:, None, None] / gh
    )[:, :, None, :, None]
    xx = (
        (-w / 2.0)[:, None, None]
        + pw[None, :, None] * bin_w[:, None, None]
        + ix[None, None, :] * bin_w[:, None, None] / gw
    )[:, None, :, None, :]
    c = cos[:, None, None, None, None]
    s = sin[:, None, None, None, None]
    y = yy * c - xx * s + cy[:, None, None, None, None]
    x = yy * s + xx * c + cx[:, None, None, None, None]

    rows, cols, weights = _bilinear_taps(y, x, height, width)
    batch = rois[:, 0].long()[:, None, None, None, None, None]
    flat = (batch * height + rows) * width + cols  # (K, oh, ow, gh, gw, 4)
    bag = gh * gw * 4
    weights = (weights / (gh * gw)).to(table.dtype)
    pooled = F.embedding_bag(
        flat.reshape(k * oh * ow, bag),
        table,
        per_sample_weights=weights.reshape(k * oh * ow, bag),
        mode="sum",
    )
    return pooled.reshape(k, oh, ow, table.shape[1])


def _pool_chunked(
    table: Tensor,
    rois: Tensor,
    geometry: tuple[Tensor, ...],
    out_hw: tuple[int, int],
    grid_hw: tuple[int, int],
    map_hw: tuple[int, int],
) -> Tensor:
    per_roi = out_hw[0] * out_hw[1] * grid_hw[0] * grid_hw[1] * 4
    step = max(1, _MAX_INDICES_PER_CHUNK // per_roi)
    parts = [
        _pool_fixed_grid(
            table, rois[i : i + step], tuple(g[i : i + step] for g in geometry), out_hw, grid_hw, map_hw
        )
        # One call even for zero RoIs, so the result keeps its shape and autograd graph.
        for i in range(0, max(rois.shape[0], 1), step)
    ]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def roi_align_rotated(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int] = 7,
    spatial_scale: float = 1.0,
    sampling_ratio: int = 2,
    aligned: bool = True,
    clockwise: bool = True,
) -> Tensor:
    """Pool ``(K, C, oh, ow)`` features from ``features (B, C, H, W)`` inside rotated RoIs.

    ``rois`` is ``(K, 6)``: ``(batch_index, cx, cy, w, h, theta)`` in image pixels, theta in
    radians; ``spatial_scale`` is ``1 / stride`` of ``features``. Semantics are mmcv's
    ``RoIAlignRotated`` (module docstring); note the defaults here are HBD-Net's
    (``sampling_ratio=2, clockwise=True``), the module's are mmcv's.
    """
    if features.dim() != 4:
        raise ValueError(f"features must be (B, C, H, W), got shape {tuple(features.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 6:
        raise ValueError(f"rois must be (K, 6), got shape {tuple(rois.shape)}")
    oh, ow = _pair(output_size)
    _, channels, height, width = features.shape
    # Sample coordinates need at least float32 even for half-precision features.
    coord_dtype = torch.promote_types(torch.promote_types(rois.dtype, features.dtype), torch.float32)
    geometry = _scaled_rois(rois, spatial_scale, aligned, clockwise, coord_dtype)
    # One row per feature-map cell, channels contiguous: what embedding_bag gathers from.
    table = features.permute(0, 2, 3, 1).reshape(-1, channels).contiguous()
    map_hw = (height, width)

    if sampling_ratio > 0:
        pooled = _pool_chunked(table, rois, geometry, (oh, ow), (sampling_ratio, sampling_ratio), map_hw)
        return pooled.permute(0, 3, 1, 2).contiguous()

    # Adaptive grid, ceil(roi size / output size) per RoI: pool each group of RoIs sharing a grid.
    _, _, w, h, _, _ = geometry
    grid = torch.stack([torch.ceil(h / oh), torch.ceil(w / ow)], dim=1).long()
    pooled = table.new_zeros(rois.shape[0], oh, ow, channels)
    parts, order = [], []
    for gh, gw in torch.unique(grid, dim=0).tolist():
        if gh <= 0 or gw <= 0:
            continue  # empty grid: mmcv's sum over no samples, divided by max(count, 1), is 0
        idx = torch.nonzero((grid[:, 0] == gh) & (grid[:, 1] == gw)).squeeze(1)
        sub_geometry = tuple(g[idx] for g in geometry)
        parts.append(_pool_chunked(table, rois[idx], sub_geometry, (oh, ow), (gh, gw), map_hw))
        order.append(idx)
    if parts:
        pooled = pooled.index_put((torch.cat(order),), torch.cat(parts))
    else:
        # Every RoI pooled to zeros (or there are none): still hang the result on the graph, as the
        # fixed-grid path does, so that backward() through it works.
        pooled = pooled + table[:0].sum()
    return pooled.permute(0, 3, 1, 2).contiguous()


class RoIAlignRotated(nn.Module):
    """mmcv's ``RoIAlignRotated`` module (same constructor arguments and defaults).

    HBD-Net builds it as ``RoIAlignRotated(7, 1 / stride, sampling_ratio=2, clockwise=True)``.
    """

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int = 0,
        aligned: bool = True,
        clockwise: bool = False,
    ) -> None:
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = aligned
        self.clockwise = clockwise

    def forward(self, features: Tensor, rois: Tensor) -> Tensor:
        return roi_align_rotated(
            features,
            rois,
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.aligned,
            self.clockwise,
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, clockwise={self.clockwise}"
        )
