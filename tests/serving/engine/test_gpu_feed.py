"""Feeding a GPU model: batch size and read threads by device, uploads started in the reading threads.

The CUDA copies themselves run only on a GPU (tests/models/test_transfer.py); here a detector that
asks for its images ahead (``prepare_ahead``) stands in for one, on both read paths of the pool.
"""

from __future__ import annotations

import threading
import zlib

import numpy as np
import pytest

import serving.engine.worker as worker_module
from hbdnet.pyramid import PlanWindow
from serving.engine.detectors import NoopDetector, NoopSpec
from serving.engine.pools import InProcessPool, PoolConfig
from serving.engine.reader import plan_scene
from serving.engine.scene import open_scene
from serving.engine.worker import GPU_BATCH_SIZE, WindowWorker, default_read_threads, device_stager
from serving.testing.simulate import texture


class Staged:
    def __init__(self, image: np.ndarray):
        self.image = image
        self.thread = threading.current_thread().name


class AheadDetector:
    """Checksums of the pixels it was given, with ``prepare`` as a GPU detector has it."""

    name = "ahead"

    def __init__(self, prepare_ahead: bool):
        self.prepare_ahead = prepare_ahead
        self.threads: set[str] = set()

    def prepare(self, image: np.ndarray) -> Staged:
        return Staged(image)

    def detect(self, images, windows: list[PlanWindow]):
        out = []
        for img, win in zip(images, windows):
            if self.prepare_ahead:
                assert isinstance(img, Staged), "an image reached detect without its upload started"
                self.threads.add(img.thread)
                img = img.image
            score = float(zlib.crc32(np.ascontiguousarray(img).tobytes()) % 100_003)
            out.append((np.array([[win.width / 2, win.height / 2, 8.0, 4.0, 0.0]], np.float32),
                        np.array([score], np.float32), np.zeros(1, np.int64)))
        return out


def test_default_read_threads():
    assert default_read_threads(False) == 2  # beside a CPU model the model wants the cores
    assert default_read_threads(True, cpus=16, gpus=1) == 15
    assert default_read_threads(True, cpus=16, gpus=4) == 3
    assert default_read_threads(True, cpus=2, gpus=1) == 2
    assert default_read_threads(True, cpus=128, gpus=1) == 16


def test_a_worker_for_a_gpu_batches_and_reads_more(monkeypatch):
    assert WindowWorker(NoopSpec()).batch_size == 1
    assert WindowWorker(NoopSpec()).read_threads == 2
    # what the worker decides once the device resolves to a GPU (the detector itself stays a no-op here)
    monkeypatch.setattr(worker_module, "local_gpus", lambda spec: 1)
    worker = WindowWorker(NoopSpec())
    assert worker.batch_size == GPU_BATCH_SIZE >= 8
    assert worker.read_threads == default_read_threads(True, gpus=1)
    assert WindowWorker(NoopSpec(), batch_size=3, read_threads=5).batch_size == 3  # settings win


def test_device_stager_only_for_detectors_that_upload_ahead():
    assert device_stager(NoopDetector()) is None
    assert device_stager(AheadDetector(prepare_ahead=False)) is None
    detector = AheadDetector(prepare_ahead=True)
    assert device_stager(detector) == detector.prepare


@pytest.mark.parametrize("one_pass", [True, False])
def test_uploads_start_in_reading_threads_and_the_pixels_are_the_same(geotiff, one_pass):
    path = str(geotiff("s.tif", texture(3, 900, 1100, seed=3), block=128))
    plan = plan_scene(open_scene(path), window=256, overlap=40)

    def run(detector):
        with InProcessPool(NoopSpec(), PoolConfig(workers=0, one_pass=one_pass, batch_size=3)) as pool:
            pool._worker.detector = detector
            return pool.run(plan.spec, plan.items)

    plain = run(AheadDetector(prepare_ahead=False))
    ahead = AheadDetector(prepare_ahead=True)
    staged = run(ahead)
    assert [d.scores.tolist() for d in staged.detections] == [d.scores.tolist() for d in plain.detections]
    assert len(staged.detections) == len(plan.items)
    assert ahead.threads and threading.main_thread().name not in ahead.threads
    assert ahead.threads <= ({"hbdnet-upload"} if one_pass else {f"hbdnet-read_{i}" for i in range(8)})
