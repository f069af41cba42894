"""Backbones returning ``[C2, C3, C4, C5]`` feature maps (strides 4, 8, 16, 32) and their ``out_channels``."""

from hbdnet.models.backbones.efficientnet_lite import EfficientNetLite0
from hbdnet.models.backbones.resnet import ResNet, resnet50, resnet_tiny

__all__ = ["EfficientNetLite0", "ResNet", "resnet50", "resnet_tiny"]
