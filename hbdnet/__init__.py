"""HBD-Net: holistic bridge detection in large remote-sensing scenes, in plain PyTorch."""

__version__ = "0.1.0"
