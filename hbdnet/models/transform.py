"""Input normalisation and batching as the authors' pipeline does it (mmdet ``Normalize`` + ``Pad``).

Images are RGB on a 0-255 scale; they are normalised with the ImageNet mean/std, then padded with
zeros (after normalisation, so the padding is the mean colour's zero, not black) at the bottom and
right to a multiple of 32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def normalize(images: Tensor) -> Tensor:
    """``(B, 3, H, W)`` or ``(3, H, W)`` RGB 0-255 (uint8 or float) -> float32 normalised."""
    x = images.float()
    mean = x.new_tensor(PIXEL_MEAN).view(3, 1, 1)
    std = x.new_tensor(PIXEL_STD).view(3, 1, 1)
    return (x - mean) / std


def batch_images(
    images: Tensor | Sequence[Tensor], size_divisor: int = 32
) -> tuple[Tensor, list[tuple[int, int]]]:
    """Normalise RGB 0-255 images and pad them into one batch.

    Args:
        images: a ``(B, 3, H, W)`` tensor or a sequence of ``(3, H_i, W_i)`` tensors.
    Returns:
        ``(B, 3, H', W')`` float batch with ``H'``, ``W'`` multiples of ``size_divisor``, and the
        ``(H_i, W_i)`` size of each image before padding.
    """
    if isinstance(images, Tensor) and images.dim() == 4:
        items = list(images.unbind(0))
    else:
        items = list(images)
    if not items:
        raise ValueError("no images")
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in items]
    max_h = max(h for h, _ in sizes)
    max_w = max(w for _, w in sizes)
    target = (-(-max_h // size_divisor) * size_divisor, -(-max_w // size_divisor) * size_divisor)
    # Normalised in place in the batch: one window-sized float32 buffer, not four (convert,
    # subtract, divide, pad), which on a CPU stack up in the heap beside the model's own buffers.
    batch = torch.zeros(len(items), 3, *target, dtype=torch.float32, device=items[0].device)
    mean = batch.new_tensor(PIXEL_MEAN).view(3, 1, 1)
    std = batch.new_tensor(PIXEL_STD).view(3, 1, 1)
    for slot, image, (h, w) in zip(batch, items, sizes):
        slot[:, :h, :w].copy_(image).sub_(mean).div_(std)
    return batch, sizes
