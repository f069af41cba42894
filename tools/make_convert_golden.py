"""Make the conversion golden fixture: a tiny random Oriented R-CNN in the authors' (mmrotate) layout,
one input, and mmrotate 0.3.4's outputs on it, so that CI can check ``hbdnet convert`` without mmcv.

Run once, in a separate virtual environment with the authors' stack (``../shared/wheels/README.md``):

    python3 -m venv /tmp/mmrotate-venv && . /tmp/mmrotate-venv/bin/activate
    pip install torch==2.14.1 torchvision==0.29.1 ../shared/wheels/mmcv_full-1.7.2-cp311-cp311-linux_x86_64.whl
    pip install mmdet==2.28.2 mmrotate==0.3.4 safetensors
    python tools/make_convert_golden.py -o tests/models/fixtures/convert_golden.safetensors

(torch 2.14.1 is the build the mmcv wheel was compiled against; it is a multi-GB download.)

The model is the authors' detector (angle version ``oc``, ResNet bottlenecks with mmdet's key names,
FPN, oriented RPN, rotated RoI head), made tiny so the fixture stays small: one bottleneck per stage
and base width 8 (exactly hbdnet's ``resnet_tiny``), a 16-channel FPN, 32-unit FC layers. Its weights
are random (seeded) and every tensor, BatchNorm statistics included, is perturbed, so that a dropped
or mis-mapped tensor changes the outputs.

The fixture is one safetensors file (no pickle): ``authors.<key>`` (the state dict, as a released
checkpoint names it), ``input`` (uint8 RGB, 3 x H x W), ``ref.fpn.<i>`` (P2..P6), ``ref.proposals``
(RPN proposals after NMS, ``(N, 6)``: cx, cy, w, h, angle ``oc``, score), ``ref.roi_scores`` and
``ref.roi_boxes`` (the RoI head's softmax scores and decoded boxes for those proposals, before NMS),
and ``ref.dets`` (final detections, ``oc``); the metadata holds the hbdnet model config as JSON
(``hbdnet_model``) and the versions used. ``tests/models/test_convert_golden.py`` converts the
weights with ``hbdnet.convert`` and compares each stage to float tolerance.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

SIZE = 256
FPN = 16
FC = 32
SEED = 0
# Test-time settings shared with the hbdnet side (tests/models/test_convert_golden.py reads them back).
RPN_NMS_PRE = 200
RPN_MAX_PER_IMG = 100
RCNN_SCORE_THR = 0.05
RCNN_NMS_IOU = 0.4
RCNN_MAX_PER_IMG = 100


def mmrotate_config(
    base_channels: int = 8,
    fpn: int = FPN,
    fc: int = FC,
    rpn_nms_pre: int = RPN_NMS_PRE,
    rpn_max_per_img: int = RPN_MAX_PER_IMG,
    rcnn_score_thr: float = RCNN_SCORE_THR,
    rcnn_nms_iou: float = RCNN_NMS_IOU,
    rcnn_max_per_img: int = RCNN_MAX_PER_IMG,
):
    """mmrotate 0.3.4's Oriented R-CNN (``oc``) in the authors' layout; the defaults are the fixture's tiny
    model. ``base_channels=64, fpn=256, fc=1024`` and the authors' test settings are the full detector
    (``tools/bench_window.py``); the ResNet's blocks per stage come from mmdet's ``arch_settings``."""
    from mmcv import ConfigDict

    angle = "oc"
    c = base_channels
    cfg = dict(
        type="OrientedRCNN",
        backbone=dict(type="ResNet", depth=50, base_channels=c, num_stages=4, out_indices=(0, 1, 2, 3),
                      frozen_stages=1, norm_cfg=dict(type="BN", requires_grad=True), norm_eval=True,
                      style="pytorch", init_cfg=None),
        neck=dict(type="FPN", in_channels=[4 * c, 8 * c, 16 * c, 32 * c], out_channels=fpn, num_outs=5),
        rpn_head=dict(
            type="OrientedRPNHead", in_channels=fpn, feat_channels=fpn, version=angle,
            anchor_generator=dict(type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0],
                                  strides=[4, 8, 16, 32, 64]),
            bbox_coder=dict(type="MidpointOffsetCoder", angle_range=angle, target_means=[0.0] * 6,
                            target_stds=[1.0, 1.0, 1.0, 1.0, 0.5, 0.5]),
            loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
            loss_bbox=dict(type="SmoothL1Loss", beta=1.0 / 9.0, loss_weight=1.0)),
        roi_head=dict(
            type="OrientedStandardRoIHead",
            bbox_roi_extractor=dict(type="RotatedSingleRoIExtractor",
                                    roi_layer=dict(type="RoIAlignRotated", out_size=7, sample_num=2, clockwise=True),
                                    out_channels=fpn, featmap_strides=[4, 8, 16, 32], finest_scale=16),
            bbox_head=dict(
                type="RotatedShared2FCBBoxHead", in_channels=fpn, fc_out_channels=fc, roi_feat_size=7,
                num_classes=1,
                bbox_coder=dict(type="DeltaXYWHAOBBoxCoder", angle_range=angle, norm_factor=None, edge_swap=True,
                                proj_xy=True, target_means=(0.0, 0.0, 0.0, 0.0, 0.0),
                                target_stds=(0.1, 0.1, 0.2, 0.2, 0.1)),
                reg_class_agnostic=True,
                loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                loss_bbox=dict(type="SmoothL1Loss", beta=1.0, loss_weight=1.0))),
        train_cfg=None,
        test_cfg=dict(
            rpn=dict(nms_pre=rpn_nms_pre, max_per_img=rpn_max_per_img, nms=dict(type="nms", iou_threshold=0.8),
                     min_bbox_size=0),
            rcnn=dict(nms_pre=2000, min_bbox_size=0, score_thr=rcnn_score_thr,
                      nms=dict(iou_thr=rcnn_nms_iou), max_per_img=rcnn_max_per_img)),
    )
    return ConfigDict(cfg)


def hbdnet_model_config() -> dict:
    """The same architecture as hbdnet's ModelConfig fields (plain data, read back by the test)."""
    return dict(backbone="resnet_tiny", fpn_channels=FPN, rpn_feat_channels=FPN, fc_channels=FC,
                rpn_nms_pre=RPN_NMS_PRE, rpn_max_per_img=RPN_MAX_PER_IMG, score_thr=RCNN_SCORE_THR,
                nms_iou=RCNN_NMS_IOU, max_per_img=RCNN_MAX_PER_IMG, finest_scale=16.0)


def perturb_weights(model: torch.nn.Module, seed: int) -> None:
    """Perturb every floating-point tensor in place, BatchNorm statistics included, so that a dropped or
    mis-mapped tensor changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("running_mean"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            else:
                t.add_(0.05 * torch.randn(t.shape, generator=g) * (t.std() if t.numel() > 1 else 1.0))


def make_input() -> np.ndarray:
    """A 256 px RGB scene: textured ground and a few bright oriented bars."""
    rng = np.random.default_rng(SEED)
    img = rng.normal(70, 15, size=(SIZE, SIZE, 3))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    for cx, cy, w, h, t in ((80, 90, 120, 14, 0.3), (170, 180, 90, 12, -1.1), (190, 60, 60, 20, 0.0)):
        u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
        v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
        img[(np.abs(u) <= w / 2) & (np.abs(v) <= h / 2)] = (225, 215, 200)
    return img.clip(0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", default="tests/models/fixtures/convert_golden.safetensors")
    args = parser.parse_args()

    import mmcv
    import mmdet
    import mmrotate
    from mmdet.models.backbones import ResNet
    from mmdet.models.backbones.resnet import Bottleneck
    from mmrotate.models import build_detector
    from safetensors.torch import save_file

    # One bottleneck per stage: hbdnet's resnet_tiny (mmdet's ResNet takes its blocks from arch_settings).
    ResNet.arch_settings = {**ResNet.arch_settings, 50: (Bottleneck, (1, 1, 1, 1))}
    torch.manual_seed(SEED)
    model = build_detector(mmrotate_config())
    model.init_weights()
    perturb_weights(model, SEED + 1)
    model.eval()

    rgb = make_input()
    mean = np.array([123.675, 116.28, 103.53])
    std = np.array([58.395, 57.12, 57.375])
    img = torch.from_numpy(((rgb - mean) / std).astype(np.float32)).permute(2, 0, 1)[None]
    metas = [dict(img_shape=(SIZE, SIZE, 3), ori_shape=(SIZE, SIZE, 3), pad_shape=(SIZE, SIZE, 3),
                  scale_factor=np.ones(4, dtype=np.float32), flip=False)]
    with torch.no_grad():
        feats = model.extract_feat(img)
        proposals = model.rpn_head.simple_test_rpn(feats, metas)
        rois = torch.cat([torch.zeros(len(proposals[0]), 1), proposals[0][:, :5]], dim=1)
        bbox_results = model.roi_head._bbox_forward(feats, rois)
        scores = torch.softmax(bbox_results["cls_score"], dim=-1)
        boxes = model.roi_head.bbox_head.bbox_coder.decode(rois[:, 1:], bbox_results["bbox_pred"],
                                                           max_shape=(SIZE, SIZE))
        dets = model.roi_head.simple_test(feats, proposals, metas, rescale=False)[0][0]

    tensors = {f"authors.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors["input"] = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    for i, f in enumerate(feats):
        tensors[f"ref.fpn.{i}"] = f[0].contiguous()
    tensors["ref.proposals"] = proposals[0].contiguous()
    tensors["ref.roi_scores"] = scores.contiguous()
    tensors["ref.roi_boxes"] = boxes.contiguous()
    tensors["ref.dets"] = torch.from_numpy(np.asarray(dets, dtype=np.float32).reshape(-1, 6))
    meta = {
        "hbdnet_model": json.dumps(hbdnet_model_config()),
        "versions": json.dumps({"torch": torch.__version__, "mmcv": mmcv.__version__, "mmdet": mmdet.__version__,
                                "mmrotate": mmrotate.__version__}),
        "angle_version": "oc",
        "seed": str(SEED),
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata=meta)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.2f} MB): {len(proposals[0])} proposals, {len(tensors['ref.dets'])} "
          f"detections; versions {meta['versions']}")


if __name__ == "__main__":
    main()
