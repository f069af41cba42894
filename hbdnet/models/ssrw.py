"""SSRW, shape-sensitive sample re-weighting of the second-stage box regression (HBD-Net).

For a positive RoI with proposal centre ``p`` matched to a GT box ``(g, w, h, theta)``:

    d  = p - g
    Qw = 2 |d . (cos theta, sin theta)| / w       # 0 at the GT centre, 1 on its edge
    Qh = 2 |d . (-sin theta, cos theta)| / h
    q  = (1 + ln(1 + Qw)) (1 + ln(1 + Qh))
    weight = mu * q * (1 + ln r),   r = long side / short side

The released code uses ``r = h / w`` on unordered ``oc`` rows, which makes ``1 + ln r`` negative for
many elongated bridges and flips the sign of their loss; here ``r >= 1`` always (the fix the method
digest recommends). With ``r`` symmetric in ``w`` and ``h``, and ``Qw``/``Qh`` swapping together with
``w``/``h``, the weight does not depend on which row describes the GT.
"""

from __future__ import annotations

import torch
from torch import Tensor


def ssrw_weights(proposal_centres: Tensor, gt_boxes: Tensor, mu: float = 0.3) -> Tensor:
    """``(N, 2)`` proposal centres and ``(N, 5)`` matched GT boxes (any row form) -> ``(N,)`` weights."""
    gx, gy, w, h, theta = gt_boxes.unbind(-1)
    dx = proposal_centres[:, 0] - gx
    dy = proposal_centres[:, 1] - gy
    cos, sin = torch.cos(theta), torch.sin(theta)
    qw = torch.nan_to_num(2 * (dx * cos + dy * sin).abs() / w, nan=0.0)
    qh = torch.nan_to_num(2 * (-dx * sin + dy * cos).abs() / h, nan=0.0)
    q = (1 + torch.log1p(qw)) * (1 + torch.log1p(qh))
    ratio = torch.maximum(w, h) / torch.minimum(w, h)
    return mu * q * (1 + torch.log(ratio))
