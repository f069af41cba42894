"""``WindowWorker``: a detector and the scenes it reads; the same class in this process and in
every Ray actor.

Each worker builds its detector from a ``DetectorSpec`` inside its own process and on its own
device, opens each scene itself, keeps it open across tasks, reads its windows and runs batched
inference (``serving.engine.window_batches``), or reads a whole scene in one pass
(``serving.engine.pass_worker``).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from serving.engine.detectors import DetectorSpec, local_gpus
from serving.engine.pass_worker import pass_results
from serving.engine.pyramid_pass import PassConfig
from serving.engine.reader import ReadItem, ReadSpec
from serving.engine.tasks import TaskResult, WindowTask
from serving.engine.window_batches import ReaderSet, run_items

GPU_BATCH_SIZE = 8


def default_read_threads(on_gpu: bool, cpus: int | None = None, gpus: int = 1) -> int:
    """Reading threads of one worker: 2 beside a CPU model (the model wants the cores); beside a GPU,
    this machine's cores shared among its GPUs, one left for the worker's own thread, from 2 to 16."""
    if not on_gpu:
        return 2
    cpus = cpus or os.cpu_count() or 2
    return max(2, min(16, cpus // max(1, gpus) - 1))


class WindowWorker:
    """A detector and the scenes it reads. Used as-is in-process and as a Ray actor class.

    The ``readers`` most recently used scenes stay open (least recently used closed first): tasks of
    two scenes in flight at once alternate on a worker, and reopening a raster on every switch would
    lose its GDAL block cache.
    """

    def __init__(self, detector_spec: DetectorSpec, batch_size: int | None = None, readers: int = 2,
                 read_threads: int | None = None):
        self.detector = detector_spec.build()
        gpus = local_gpus(detector_spec)
        on_gpu = gpus > 0
        self.batch_size = batch_size or (GPU_BATCH_SIZE if on_gpu else 1)
        self.readers = max(1, readers)
        self.read_threads = max(1, read_threads or default_read_threads(on_gpu, gpus=gpus))
        self._readers: OrderedDict[ReadSpec, ReaderSet] = OrderedDict()
        self._executor = ThreadPoolExecutor(self.read_threads, thread_name_prefix="hbdnet-read")

    def reader(self, spec: ReadSpec) -> ReaderSet:
        """The open readers of ``spec``'s scene, opened (and the least recent scene closed) if needed."""
        reader = self._readers.pop(spec, None)
        if reader is None:
            while len(self._readers) >= self.readers:
                self._readers.popitem(last=False)[1].close()
            reader = ReaderSet(spec, self.read_threads)
        self._readers[spec] = reader
        return reader

    def run(self, task: WindowTask) -> TaskResult:
        return run_items(self.reader(task.spec), self.detector, task.items, self.batch_size, self._executor)

    def run_pass(self, spec: ReadSpec, items: tuple[ReadItem, ...],
                 buffer_bytes: int) -> Iterator[tuple[TaskResult, int]]:
        """A scene's windows from one pass (``serving.engine.pass_worker.pass_results``): per detector
        batch, its result and the windows it accounts for. A Ray streaming generator in an actor."""
        yield from pass_results(self.detector, spec, items, self.batch_size, PassConfig(buffer_bytes=buffer_bytes))

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        while self._readers:
            self._readers.popitem()[1].close()
