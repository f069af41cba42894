"""Window images from host memory to the model's device, ahead of the forward pass that reads them.

On a CUDA device each image is copied into page-locked (pinned) host memory, from PyTorch's caching
host allocator, and sent with a non-blocking copy on a side stream: called from the threads that
read windows, the upload of the next batch runs while the compute stream works on the current one.
``StagedImage.ready`` makes the compute stream wait for the copy before the forward pass reads it.
On a CPU an image is a view of the numpy array: no copy, no thread, no stream.

Images travel as uint8 (3 bytes a pixel, a quarter of float32); the model normalises them on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class StagedImage:
    """One window image on (or on its way to) the device; ``event`` is None once there (or on a CPU)."""

    tensor: Tensor
    event: torch.cuda.Event | None = None

    def ready(self) -> Tensor:
        """The image, safe to read on the current stream of its device."""
        if self.event is not None:
            stream = torch.cuda.current_stream(self.tensor.device)
            stream.wait_event(self.event)
            # Allocated on the side stream, used on this one: the caching allocator must not reuse its
            # memory before this stream is done with it.
            self.tensor.record_stream(stream)
            self.event = None
        return self.tensor


class HostToDevice:
    """Uploads window images to ``device`` (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.asynchronous = device.type == "cuda"
        self._stream = torch.cuda.Stream(device) if self.asynchronous else None

    def stage(self, image: np.ndarray | StagedImage) -> StagedImage:
        """Start ``image``'s upload ((C, H, W) uint8) and return at once; safe from any thread."""
        if isinstance(image, StagedImage):
            return image
        host = torch.from_numpy(np.ascontiguousarray(image))
        if self._stream is None:
            return StagedImage(host.to(self.device))
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            # The caching host allocator keeps the pinned block until the copy has used it.
            tensor = host.pin_memory().to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._stream)
        return StagedImage(tensor, event)
