"""Reading a task's windows and running the detector on them in batches, in any worker.

``run_items`` reads the windows of one task (with read-ahead threads when given an executor) and
``detect_batch`` runs the detector on a batch of one level's windows; a one-pass read
(``serving.engine.pass_worker``) feeds ``detect_batch`` too. ``ReaderSet`` lends a scene's open
readers to the reading threads.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from hbdnet.data.raster import DEFAULT_MAX_CHUNK_BYTES
from hbdnet.pyramid import PlanWindow, context_crops
from serving.engine.detectors import WindowDetector
from serving.engine.reader import ReadItem, ReadSpec, WindowReader
from serving.engine.tasks import TaskResult
from serving.merge.window_detections import WindowDetections


def device_stager(detector: WindowDetector) -> Callable[[np.ndarray], object] | None:
    """The detector's ``prepare`` (start sending an image to its GPU) where it pays to call it in the
    reading threads, ahead of ``detect``; None for a CPU model and for detectors without one."""
    return detector.prepare if getattr(detector, "prepare_ahead", False) else None  # type: ignore[attr-defined]


def read_contexts(reader: ReaderSet | WindowReader, detector: WindowDetector, windows: list[PlanWindow]) -> list | None:
    """The coarser crops around level-0 windows, for a detector with inter-layer feature fusion.

    The detector says how many levels it fuses (``context_levels``) and the crop size
    (``context_size``); None when it fuses none or the windows are not full-resolution ones.
    """
    levels = getattr(detector, "context_levels", 0)
    if not levels or windows[0].level != 0:
        return None
    size = detector.context_size  # type: ignore[attr-defined]
    return [
        [(reader.read(c.window, needs_mask=True), c.rel_box)
         for c in context_crops(w, reader.height, reader.width, levels, size)]
        for w in windows
    ]


class ReaderSet:
    """``n`` open readers of one scene, lent to reading threads one at a time (a dataset handle is not
    thread-safe, and GDAL releases the GIL while it decodes, so n threads read about n times faster)."""

    def __init__(self, spec: ReadSpec, n: int):
        self.spec = spec
        # The threads share the chunk budget of one reader, so memory does not grow with n.
        self._all = [WindowReader(spec, DEFAULT_MAX_CHUNK_BYTES // max(1, n)) for _ in range(max(1, n))]
        self._free: queue.SimpleQueue[WindowReader] = queue.SimpleQueue()
        for r in self._all:
            self._free.put(r)
        self.height, self.width = self._all[0].height, self._all[0].width

    def read(self, window: PlanWindow, needs_mask: bool = False) -> np.ndarray:
        reader = self._free.get()
        try:
            return reader.read(window, needs_mask)
        finally:
            self._free.put(reader)

    def close(self) -> None:
        for r in self._all:
            r.close()


def run_items(reader: ReaderSet | WindowReader, detector: WindowDetector, items: Sequence[ReadItem],
              batch_size: int, executor: ThreadPoolExecutor | None = None) -> TaskResult:
    """Read ``items`` and detect on them in batches (all items of a task share one level).

    With an ``executor``, every read of the task is started at once on its threads, so windows are
    read ahead while the detector works on earlier ones (and, for a GPU model, sent to the GPU there).
    """
    result = TaskResult([], started=time.time())
    if executor is not None:
        stage = device_stager(detector)

        def read(it: ReadItem) -> object:
            image = reader.read(it.window, it.needs_mask)
            return image if stage is None else stage(image)

        pending = [executor.submit(read, it) for it in items]
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        t0 = time.perf_counter()
        if executor is not None:
            images = [f.result() for f in pending[start:start + batch_size]]
        else:
            images = [reader.read(it.window, it.needs_mask) for it in batch]
        detect_batch(detector, reader, batch, images, result, t0)
    result.finished = time.time()
    return result


def detect_batch(detector: WindowDetector, reader: ReaderSet | WindowReader, batch: Sequence[ReadItem],
                 images: list[np.ndarray], result: TaskResult, t0: float) -> None:
    """Run the detector on one batch of a level's windows, whose images were read since ``t0``
    (``reader`` also gives a fusing model its context crops), adding detections and times to ``result``."""
    windows = [it.window for it in batch]
    contexts = read_contexts(reader, detector, windows)
    t1 = time.perf_counter()
    if contexts is None:
        outputs = detector.detect(images, windows)
    else:
        outputs = detector.detect(images, windows, contexts=contexts)  # type: ignore[call-arg]
    t2 = time.perf_counter()
    if len(outputs) != len(batch):
        raise RuntimeError(f"detector {detector.name} returned {len(outputs)} results for {len(batch)} windows")
    for it, (boxes, scores, labels) in zip(batch, outputs):
        result.detections.append((it.index, WindowDetections(it.window, boxes, scores, labels)))
    result.read_s += t1 - t0
    result.detect_s += t2 - t1
