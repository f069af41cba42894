"""Oriented R-CNN in plain PyTorch: backbones, FPN, oriented RPN, rotated RoI head, builders."""

from hbdnet.models.build import ModelConfig, build_oriented_rcnn
from hbdnet.models.oriented_rcnn import OrientedRCNN

__all__ = ["ModelConfig", "OrientedRCNN", "build_oriented_rcnn"]
