"""Cross-check against mmcv's compiled ``box_iou_rotated`` and ``nms_rotated`` where mmcv is installed.

mmcv takes rows ``(cx, cy, w, h, theta)`` in radians with the corners of its
``get_rotated_vertices`` (``box_iou_rotated_utils.hpp``): ``c -/+ (w/2)(cos, sin) +/- (h/2)(-sin, cos)``
in image coordinates, the same rectangle as :func:`hbdnet.boxes.obb_to_poly`. Its ``clockwise``
argument (where it exists) defaults to that convention, so it is not passed. mmcv computes in
float32 and sorts scores without a stable tie rule, so scores here are distinct.
"""

import math

import pytest
import torch

from hbdnet.boxes.iou import box_iou_rotated
from hbdnet.boxes.nms import batched_nms_rotated, nms_rotated

pytest.importorskip("mmcv")
try:
    from mmcv.ops import box_iou_rotated as mmcv_box_iou_rotated
    from mmcv.ops import nms_rotated as mmcv_nms_rotated
except Exception as exc:  # mmcv without compiled ops (mmcv-lite, or a build that does not load)
    pytest.skip(f"mmcv.ops is not usable: {exc}", allow_module_level=True)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def boxes(n: int, extent: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat(
        [
            torch.rand(n, 2, generator=g) * extent,
            2 + torch.rand(n, 2, generator=g) * 150,
            (torch.rand(n, 1, generator=g) - 0.5) * 2 * math.pi,
        ],
        1,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["iou", "iof"])
def test_box_iou_rotated_matches_mmcv(device, mode):
    b1, b2 = boxes(300, 600, seed=0).to(device), boxes(400, 600, seed=1).to(device)
    ours = box_iou_rotated(b1, b2, mode=mode)
    theirs = mmcv_box_iou_rotated(b1, b2, mode=mode, aligned=False)
    assert (theirs > 0).float().mean() > 0.05
    assert (ours - theirs).abs().max().item() <= 1e-4
    ours_aligned = box_iou_rotated(b1, b2[:300], mode=mode, aligned=True)
    theirs_aligned = mmcv_box_iou_rotated(b1, b2[:300], mode=mode, aligned=True)
    assert (ours_aligned - theirs_aligned).abs().max().item() <= 1e-4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("thr", [0.1, 0.4, 0.7])
def test_nms_rotated_matches_mmcv(device, thr):
    b = boxes(300, 300, seed=2)
    # Near-duplicates so that plenty is suppressed, and distinct scores.
    jitter = torch.randn(150, 5, generator=torch.Generator().manual_seed(3)) * torch.tensor([4.0, 4.0, 6.0, 3.0, 0.05])
    b = torch.cat([b, b[:150] + jitter])
    b[:, 2:4] = b[:, 2:4].abs() + 1
    scores = torch.randperm(len(b), generator=torch.Generator().manual_seed(4)).float() / len(b)
    b, scores = b.to(device), scores.to(device)
    _, theirs = mmcv_nms_rotated(b, scores, thr)
    ours = nms_rotated(b, scores, thr)
    assert len(ours) < len(b)
    assert ours.tolist() == theirs.tolist()
    labels = torch.arange(len(b), device=device) % 3
    _, theirs_batched = mmcv_nms_rotated(b, scores, thr, labels)
    assert sorted(batched_nms_rotated(b, scores, labels, thr).tolist()) == sorted(theirs_batched.tolist())
