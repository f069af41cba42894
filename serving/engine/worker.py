"""What a worker does with a scene: ``WindowWorker`` (the same class in this process and in every Ray
actor) builds its detector from a ``DetectorSpec`` inside its own process and on its own device, opens
each scene itself and keeps it open across tasks, and runs the detector on its windows in batches of
one level, either read window by window (``run_items``: a task's windows, with read-ahead threads) or
cut from one decode of the scene (``pass_results``: ``PyramidPass``).

One pass. The in-process pool (``workers=0``) and a Ray pool of one actor read each scene this way:
the scene is decoded once, and windows reach the detector as soon as the rows they need have been
decoded, in batches of one level (a batch is flushed when it is full, and every partial batch at the
end). Results are keyed by plan index, as from the per-window path, so the merge sees the same
detections in the same order. For a GPU model, a thread takes the windows from the pass and starts
their upload to the GPU (``device_stager``) up to a batch ahead, so the next batch is on its way while
the GPU works on the current one; a CPU model takes the pass's windows as they come.
"""

from __future__ import annotations

import contextlib
import os
import queue
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from hbdnet.data.raster import DEFAULT_MAX_CHUNK_BYTES
from hbdnet.pyramid import PlanWindow, context_crops
from serving.engine.ahead import ahead
from serving.engine.detectors import DetectorSpec, WindowDetector, local_gpus
from serving.engine.pyramid_pass import PassConfig, PyramidPass
from serving.engine.reader import ReadItem, ReadSpec, WindowReader
from serving.engine.scene import RemoteAccess, use_remote_access
from serving.engine.tasks import SceneState, TaskResult, WindowTask
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


def _detect(detector: WindowDetector, one_pass: PyramidPass, batch: list[tuple[ReadItem, np.ndarray]],
            result: TaskResult) -> None:
    """Run the detector on a batch of one level's windows cut by the pass, adding to ``result``."""
    detect_batch(detector, one_pass, [it for it, _ in batch], [img for _, img in batch],  # type: ignore[arg-type]
                 result, time.perf_counter())


def pass_results(detector: WindowDetector, spec: ReadSpec, items: Sequence[ReadItem], batch_size: int,
                 config: PassConfig = PassConfig(),
                 cancel: Callable[[], bool] | None = None) -> Iterator[tuple[TaskResult, int]]:
    """``(result, windows)`` per detector batch: ``windows`` counts the batch and the windows the pass
    skipped since the last batch (no valid pixel), so that progress reaches the total.

    ``cancel`` is asked before each batch; when it answers True the pass stops (its files removed).
    """
    one_pass = PyramidPass(spec, items, context_levels=getattr(detector, "context_levels", 0),
                           context_size=getattr(detector, "context_size", 1024), config=config)
    produced = iter(one_pass)
    stage = device_stager(detector)
    source = produced if stage is None else ahead(((it, stage(img)) for it, img in produced), batch_size,
                                                  name="hbdnet-upload")
    # Closing ``source`` first stops the upload thread, then ``produced`` the pass's decoding thread;
    # then the pass removes its files.
    with one_pass, contextlib.closing(produced), contextlib.closing(source):
        batches: dict[int, list[tuple[ReadItem, np.ndarray]]] = {}  # level -> windows waiting
        reported_skips = 0
        result = TaskResult([], started=time.time())
        while True:
            t = time.perf_counter()
            got = next(source, None)
            result.read_s += time.perf_counter() - t
            full = []
            if got is not None:
                item, image = got
                batch = batches.setdefault(item.window.level, [])
                batch.append((item, image))
                if len(batch) >= batch_size:
                    full.append(batches.pop(item.window.level))
            else:
                full = list(batches.values())
                batches.clear()
            for batch in full:
                if cancel is not None and cancel():
                    return
                _detect(detector, one_pass, batch, result)
                skips = len(one_pass.stats.skipped) - reported_skips
                reported_skips += skips
                result.finished = time.time()
                yield result, len(batch) + skips
                result = TaskResult([], started=time.time())
            if got is None:
                break
        skips = len(one_pass.stats.skipped) - reported_skips
        if skips:
            result.finished = time.time()
            yield result, skips


def run_scene_in_one_pass(detector: WindowDetector, batch_size: int, scene: SceneState,
                          buffer_bytes: int | None = None) -> None:
    """Every window of ``scene`` through ``detector`` from one pass (``InProcessPool``).

    The scene's per-task queue is not used; an error fails the scene alone, as in the task loop. The
    windows the pass found without a valid pixel are counted in ``PoolRun.skipped``.
    """
    job = scene.job
    config = PassConfig() if buffer_bytes is None else PassConfig(buffer_bytes=buffer_bytes)
    scene.pending.clear()
    windows_done = run = 0
    try:
        for result, windows in pass_results(detector, job.spec, job.items, batch_size, config,
                                            cancel=scene.cancelled):
            scene.add(result, windows)
            windows_done += windows
            run += len(result.detections)
    except Exception as exc:  # this scene fails; the caller decides about the others
        scene.fail(exc)
        return
    if scene.error is None:
        scene.run.skipped = windows_done - run


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
                 read_threads: int | None = None, remote: RemoteAccess | None = None):
        if remote is not None:  # a Ray actor reads URLs as its driver does
            use_remote_access(remote)
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
        """A scene's windows from one pass (``serving.engine.worker.pass_results``): per detector
        batch, its result and the windows it accounts for. A Ray streaming generator in an actor."""
        yield from pass_results(self.detector, spec, items, self.batch_size, PassConfig(buffer_bytes=buffer_bytes))

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        while self._readers:
            self._readers.popitem()[1].close()
