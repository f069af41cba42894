"""Window images to the model's device: a view on the CPU, pinned non-blocking uploads on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hbdnet.transfer import HostToDevice, StagedImage


def test_cpu_staging_is_a_view_without_streams(monkeypatch):
    def no_cuda(*args, **kwargs):
        raise AssertionError("the CPU path touched CUDA")

    monkeypatch.setattr(torch.cuda, "Stream", no_cuda)
    monkeypatch.setattr(torch.cuda, "Event", no_cuda)
    monkeypatch.setattr(torch.Tensor, "pin_memory", no_cuda)
    up = HostToDevice(torch.device("cpu"))
    image = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    staged = up.stage(image)
    assert not up.asynchronous and staged.event is None
    tensor = staged.ready()
    assert tensor.dtype == torch.uint8 and tensor.data_ptr() == image.__array_interface__["data"][0]  # no copy
    assert up.stage(staged) is staged  # staged once only


def test_a_non_contiguous_image_is_copied_once():
    image = np.zeros((5, 4, 3), np.uint8).transpose(2, 0, 1)
    staged = HostToDevice(torch.device("cpu")).stage(image)
    assert staged.ready().is_contiguous() and staged.ready().shape == (3, 5, 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_upload_arrives_whole_after_ready():
    up = HostToDevice(torch.device("cuda"))
    images = [np.random.default_rng(i).integers(0, 255, (3, 512, 640), dtype=np.uint8) for i in range(4)]
    staged = [up.stage(im) for im in images]
    assert up.asynchronous and all(isinstance(s, StagedImage) and s.event is not None for s in staged)
    for s, im in zip(staged, images):
        assert torch.equal(s.ready().cpu(), torch.from_numpy(im))
        assert s.event is None
