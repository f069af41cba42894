"""Model workers: read windows and run the detector on them, in this process or in Ray actors.

Tasks carry window descriptors, never pixels: a ``WindowTask`` is the scene's ``ReadSpec`` (uri, bands,
stretch, GDAL cache) and a short run of plan windows of one level and one row. Each worker opens the
scene itself, keeps it open across tasks, reads its windows and runs batched inference. The same
``WindowWorker`` class does this in-process (``workers=0``) and inside every Ray actor. In process,
an exact pyramid is read instead in one pass over the scene (``PoolConfig.one_pass``,
``serving.engine.pass_worker``: every level from one decode, the same pixels). A Ray pool of one
actor (one GPU) does the same, each scene in one pass on its actor, its results streamed back (pixels
still go only from the actor's reader to its detector); several actors read window by window, so that
one scene keeps them all busy (``PoolConfig.ray_one_pass`` chooses).

Where the windows run (``make_pool``): in this process, with read-ahead threads, unless Ray pays for
itself: when the detector can use GPUs and this machine has some, when ``workers`` asks for actors,
or when ``ray_address`` joins a cluster. On a machine without a GPU Ray would only add its processes
(about 0.8 GB) and seconds of start-up for no speed-up, so the default there is in-process.

Ray pool: one actor per GPU (``num_gpus=1``) when the cluster has GPUs and the detector can use them,
else ``workers`` CPU actors (default one actor holding every CPU for torch's threads; n actors share
the CPUs). At most ``tasks_in_flight`` tasks per actor are outstanding (backpressure: windows are read
only as fast as the detector consumes them). An actor that dies is restarted by Ray and its tasks are
retried there (``max_restarts`` / ``max_task_retries``, from ``max_attempts``); a task that raises is
not retried: it fails its scene. Results are keyed by plan index and returned in plan order, so they
do not depend on the number of workers or on scheduling.

Many scenes (``run_many``): the same dispatch loop streams the tasks of up to ``open_scenes`` scenes
through the same actors, so that the actors work on the next scene while the caller plans it and
merges and writes the previous one. The next scene is taken from the caller's iterator once every
task of the open scenes is submitted; scenes come back in completion order, each with its own
result (or the error that failed it alone). Each worker keeps the readers of its ``open_scenes``
most recent scenes open, so interleaved tasks of two scenes do not reopen a raster per task.
``run`` is ``run_many`` over one scene.

Cancelling. A ``SceneJob`` may carry ``cancel``, a callable checked before each of its tasks is
submitted and as each comes back: once it answers True no further task of that scene is dispatched,
results still arriving are dropped, and the scene is yielded at once with a ``Cancelled`` error (its
tasks already running on an actor finish there and are ignored: at most ``tasks_in_flight`` per actor).
"""

from __future__ import annotations

import logging
import os
import queue
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from hbdnet.data.raster import DEFAULT_MAX_CHUNK_BYTES
from hbdnet.pyramid import PlanWindow, context_crops
from serving.engine.detectors import DetectorSpec, WindowDetector, build_detector, resolve_device, uses_gpu
from serving.engine.pyramid_pass import DEFAULT_BUFFER_BYTES
from serving.engine.reader import ReadItem, ReadSpec, WindowReader
from serving.engine.window_detections import WindowDetections

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (windows done, windows total)
Cancel = Callable[[], bool]  # True: stop dispatching the scene's windows


GPU_BATCH_SIZE = 8


def default_read_threads(on_gpu: bool, cpus: int | None = None, gpus: int = 1) -> int:
    """Reading threads of one worker: 2 beside a CPU model (the model wants the cores); beside a GPU,
    this machine's cores shared among its GPUs, one left for the worker's own thread, from 2 to 16."""
    if not on_gpu:
        return 2
    cpus = cpus or os.cpu_count() or 2
    return max(2, min(16, cpus // max(1, gpus) - 1))


def device_stager(detector: WindowDetector) -> Callable[[np.ndarray], object] | None:
    """The detector's ``prepare`` (start sending an image to its GPU) where it pays to call it in the
    reading threads, ahead of ``detect``; None for a CPU model and for detectors without one."""
    return detector.prepare if getattr(detector, "prepare_ahead", False) else None  # type: ignore[attr-defined]


class Cancelled(Exception):
    """The scene's ``cancel`` answered True: its remaining windows were not run."""


@dataclass(frozen=True)
class PoolConfig:
    """How windows are spread over workers.

    ``workers``: None = one actor per GPU where the detector can use this machine's GPUs, else in this
    process; 0 = in this process, no Ray; n > 0 = n actors. ``ray_address`` joins an existing cluster ("auto" or "host:port"); None starts a
    local runtime (unless one is already running in this process).
    """

    workers: int | None = None
    ray_address: str | None = None
    # Windows per forward pass; None: GPU_BATCH_SIZE on a GPU (one level's windows stacked into one
    # batch keep it busy), 1 on a CPU (same speed as 2, half the memory).
    batch_size: int | None = None
    # Threads reading ahead inside each worker, each with its own open dataset (GDAL decodes without
    # the GIL). They share one chunk budget and the process's one GDAL cache (``serving.engine.gdal_cache``),
    # so a second thread costs little memory (+50 MB peak at 16384 px) and reads the pyramid about
    # 1.3x faster on 2 cores (tools/bench_engine.py). None: 2 on a CPU; for a GPU, enough to feed it
    # (``default_read_threads``). A one-pass read decodes with GDAL's threads instead.
    read_threads: int | None = None
    task_windows: int = 8  # windows per task (a task never spans two rows of windows or two levels)
    tasks_in_flight: int = 2  # per actor
    open_scenes: int = 2  # scenes whose tasks may be in flight at once (run_many), and readers kept per worker
    max_attempts: int = 3  # per task, counting actor deaths (Ray's max_task_retries = max_attempts - 1)
    start_timeout_s: float = 300.0  # actors not up by then: the cluster lacks the resources asked for
    # In-process pool, exact pyramid: every level from one decode of the scene
    # (``serving.engine.pass_worker``) instead of one exact read per window (6-7 decodes).
    one_pass: bool = True
    # Coarse levels of a one-pass read held in memory up to this; the rest in temporary files (TMPDIR).
    pass_buffer_bytes: int = DEFAULT_BUFFER_BYTES
    # Ray actors read exact pyramids in one pass too: each scene on one actor (scenes of a batch spread
    # over the actors), its results streamed back batch by batch; a worker that dies is restarted and
    # the pass runs again over the windows not yet back (``max_attempts`` passes in all). None: in one
    # pass when the pool has a single actor (one GPU, or ``workers=1``), which gains nothing from
    # spreading a scene's windows and would decode the scene 6-7 times over; window by window with
    # several actors, so that one scene keeps them all busy.
    ray_one_pass: bool | None = None

    def ray_reads_in_one_pass(self, actors: int | None) -> bool:
        """Whether a Ray pool of ``actors`` (None: not known) reads each scene in one pass."""
        return self.ray_one_pass if self.ray_one_pass is not None else actors == 1


@dataclass(frozen=True)
class WindowTask:
    spec: ReadSpec
    items: tuple[ReadItem, ...]


@dataclass
class TaskResult:
    detections: list[tuple[int, WindowDetections]]  # (plan index, detections)
    read_s: float = 0.0
    detect_s: float = 0.0
    started: float = 0.0  # wall clock (time.time(), comparable across the processes of one machine)
    finished: float = 0.0


@dataclass
class PoolRun:
    """Window detections in plan order, and where the time went (read/detect summed over workers).

    ``started`` and ``finished``: wall clock (``time.time()``) of the scene's first task start and
    last task end on the workers; 0.0 for a scene with no window to read.
    """

    detections: list[WindowDetections]
    read_s: float = 0.0
    detect_s: float = 0.0
    started: float = 0.0
    finished: float = 0.0
    skipped: int = 0  # windows found without a valid pixel while reading (one-pass reads), not run


@dataclass
class SceneJob:
    """One scene for ``run_many``: its reads, a progress callback, and ``key``, the caller's own
    handle for the scene (returned with its result, never looked at by the pool)."""

    spec: ReadSpec
    items: Sequence[ReadItem]
    progress: Progress | None = None
    key: object = None
    cancel: Cancel | None = None


JobResult = tuple[SceneJob, PoolRun | Exception]  # a scene's windows, or the error that failed it


def make_tasks(items: Sequence[ReadItem], task_windows: int) -> list[tuple[ReadItem, ...]]:
    """Consecutive items of the same level and row, at most ``task_windows`` per task, in plan order.

    A row of windows per task keeps each worker's reads inside the blocks its GDAL cache holds.
    """
    tasks: list[tuple[ReadItem, ...]] = []
    run: list[ReadItem] = []
    for it in items:
        if run and ((it.window.level, it.window.row_off) != (run[0].window.level, run[0].window.row_off)
                    or len(run) >= task_windows):
            tasks.append(tuple(run))
            run = []
        run.append(it)
    if run:
        tasks.append(tuple(run))
    return tasks


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


class WindowWorker:
    """A detector and the scenes it reads. Used as-is in-process and as a Ray actor class.

    The ``readers`` most recently used scenes stay open (least recently used closed first): tasks of
    two scenes in flight at once alternate on a worker, and reopening a raster on every switch would
    lose its GDAL block cache.
    """

    def __init__(self, detector_spec: DetectorSpec, batch_size: int | None = None, readers: int = 2,
                 read_threads: int | None = None):
        self.detector = build_detector(detector_spec)
        on_gpu = uses_gpu(detector_spec) and resolve_device(detector_spec.device).startswith("cuda")
        self.batch_size = batch_size or (GPU_BATCH_SIZE if on_gpu else 1)
        self.readers = max(1, readers)
        self.read_threads = max(1, read_threads or default_read_threads(on_gpu, gpus=local_gpus(detector_spec)))
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
        from serving.engine.pass_worker import pass_results  # it imports this module
        from serving.engine.pyramid_pass import PassConfig

        yield from pass_results(self.detector, spec, items, self.batch_size, PassConfig(buffer_bytes=buffer_bytes))

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        while self._readers:
            self._readers.popitem()[1].close()


class _SceneState:
    """The bookkeeping of one scene in the dispatch loop: tasks still to submit, results so far."""

    def __init__(self, job: SceneJob, task_windows: int):
        self.job = job
        # Coarsest level first: a level-k window decodes 4**k times the pixels of a level-0 one, so the
        # few expensive tasks start early and the scene does not end with one actor busy on the top
        # level while the others idle. Within a level the plan's row order is kept (stable sort).
        tasks = sorted(make_tasks(job.items, task_windows), key=lambda t: -t[0].window.level)
        self.pending: deque[WindowTask] = deque(WindowTask(job.spec, t) for t in tasks)
        self.outstanding = 0  # tasks submitted and not yet back
        self.results: dict[int, WindowDetections] = {}
        self.run = PoolRun([])
        self.done = 0  # windows
        self.error: Exception | None = None
        self.passes = 0  # one-pass reads started (``RayPool``)

    @property
    def finished(self) -> bool:
        return self.error is not None or (not self.pending and self.outstanding == 0)

    def cancelled(self) -> bool:
        """Ask the job's ``cancel``; when it says so, fail the scene with ``Cancelled`` (once)."""
        if self.error is None and self.job.cancel is not None and self.job.cancel():
            self.fail(Cancelled(f"cancelled after {self.done} of {len(self.job.items)} windows"))
        return isinstance(self.error, Cancelled)

    def add(self, res: TaskResult, windows: int) -> None:
        self.results.update(res.detections)
        run = self.run
        run.read_s += res.read_s
        run.detect_s += res.detect_s
        run.started = res.started if not run.started else min(run.started, res.started)
        run.finished = max(run.finished, res.finished)
        self.done += windows
        if self.job.progress is not None:
            self.job.progress(self.done, len(self.job.items))

    def start_pass(self) -> tuple[ReadItem, ...]:
        """The windows for the scene's next one-pass read: those not back yet. A pass after a lost one
        meets the empty windows again, so they are counted again (progress may step back by them)."""
        self.passes += 1
        if self.passes == 1:
            return tuple(self.job.items)
        self.run.skipped = 0
        self.done = len(self.results)
        return tuple(it for it in self.job.items if it.index not in self.results)

    def fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        self.pending.clear()

    def outcome(self) -> JobResult:
        if self.error is not None:
            return self.job, self.error
        self.run.detections = [self.results[i] for i in sorted(self.results)]
        return self.job, self.run


def _run_one(pool: InProcessPool | RayPool, spec: ReadSpec, items: Sequence[ReadItem],
             progress: Progress | None, cancel: Cancel | None = None) -> PoolRun:
    """One scene through ``pool.run_many``; its error (``Cancelled`` too), if any, is raised."""
    ((_, result),) = pool.run_many([SceneJob(spec, items, progress, cancel=cancel)])
    if isinstance(result, Exception):
        raise result
    return result


class InProcessPool:
    """Runs every task in this process, one scene at a time: no Ray, same reader and detector code."""

    def __init__(self, detector_spec: DetectorSpec, config: PoolConfig = PoolConfig(workers=0)):
        self.config = config
        self._worker = WindowWorker(detector_spec, config.batch_size, readers=1, read_threads=config.read_threads)

    def run(self, spec: ReadSpec, items: Sequence[ReadItem], progress: Progress | None = None,
            cancel: Cancel | None = None) -> PoolRun:
        return _run_one(self, spec, items, progress, cancel)

    def run_many(self, jobs: Iterable[SceneJob]) -> Iterator[JobResult]:
        """Each scene in turn (nothing runs beside this process, so there is nothing to overlap)."""
        for job in jobs:
            scene = _SceneState(job, self.config.task_windows)
            if self.config.one_pass and job.spec.resampling == "exact":
                from serving.engine.pass_worker import run_scene_in_one_pass  # it imports this module

                run_scene_in_one_pass(self._worker, scene, self.config.pass_buffer_bytes)
            while scene.pending and scene.error is None and not scene.cancelled():
                task = scene.pending.popleft()
                try:
                    scene.add(self._worker.run(task), len(task.items))
                except Exception as exc:  # this scene fails; the caller decides about the others
                    scene.fail(exc)
            yield scene.outcome()

    def close(self) -> None:
        self._worker.close()

    def __enter__(self) -> InProcessPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _QuietTokenNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Token authentication is enabled" not in record.getMessage()


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to Ray: join ``address`` if given, else start a local runtime. True if this call started it.

    One code path for both: only the ``ray.init`` arguments differ. A runtime already initialised in
    this process (a test fixture, a batch run) is reused as it is.
    """
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray announces on every local start that token authentication is on; it stays on, unannounced.
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_QuietTokenNotice())
    kwargs: dict[str, object]
    if address is not None:
        kwargs = {"address": address}
    else:
        # Ray starts its workers at nice 15, but here they do all of the engine's work, and next to
        # any other busy process niced workers starve (docs/dependencies.md: tenfold slow-downs). A
        # local runtime's workers run at normal priority unless the caller's environment says otherwise.
        os.environ.setdefault("RAY_worker_niceness", "0")
        kwargs = {"num_cpus": num_cpus or os.cpu_count() or 1, "include_dashboard": False}
    ray.init(**kwargs, logging_level=logging.WARNING)
    return True


class RayPool:
    """Ray actors running ``WindowWorker``; see the module docstring for placement and retries."""

    def __init__(self, detector_spec: DetectorSpec, config: PoolConfig = PoolConfig()):
        import ray

        self.config = config
        self._detector_spec = detector_spec
        local_cpus = max(os.cpu_count() or 1, config.workers or 0)
        self._started_ray = ensure_ray(config.ray_address, local_cpus)
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if gpus and uses_gpu(detector_spec):
            n = config.workers or gpus
            options = {"num_gpus": 1, "num_cpus": 1}
        else:
            # Without a GPU, one actor by default, with every CPU as torch threads: one copy of the
            # model in memory (a CPU model's activations are most of a worker's footprint) and the
            # same throughput as several single-threaded actors. Ray sets OMP_NUM_THREADS to num_cpus.
            cpus = max(1, int(ray.available_resources().get("CPU", 1)))  # other pools may hold some
            n = config.workers or 1
            options = {"num_cpus": max(1, cpus // n)}
        retries = max(0, config.max_attempts - 1)
        self._actor_class = ray.remote(**options, max_restarts=retries, max_task_retries=retries)(WindowWorker)
        self.actors = [self._new_actor() for _ in range(n)]
        self.one_pass = config.ray_reads_in_one_pass(n)
        # Wait for the actors to be up, so that start-up time is not counted as streaming time, and so
        # that asking for more workers than the cluster can place fails here instead of hanging.
        try:
            ray.get([a.pid.remote() for a in self.actors], timeout=config.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise RuntimeError(f"{n} workers ({options}) did not start within {config.start_timeout_s:.0f} s; "
                               f"cluster resources: {resources}") from None

    def _new_actor(self):
        return self._actor_class.remote(self._detector_spec, self.config.batch_size, self.config.open_scenes,
                                        self.config.read_threads)

    def run(self, spec: ReadSpec, items: Sequence[ReadItem], progress: Progress | None = None,
            cancel: Cancel | None = None) -> PoolRun:
        return _run_one(self, spec, items, progress, cancel)

    def run_many(self, jobs: Iterable[SceneJob]) -> Iterator[JobResult]:
        """Stream the scenes of ``jobs`` through the actors, up to ``config.open_scenes`` at once.

        The next job is drawn from ``jobs`` (the caller plans it then, while the actors work) once
        every task of the open scenes is submitted. A scene is yielded as soon as its last task is back,
        after the next scene's tasks are submitted, so the actors keep working while the caller
        handles it. A task that raises, or that keeps losing its worker, fails its scene only: the
        scene is yielded with that error and its tasks still in flight are ignored when they return.
        """
        import ray
        from ray.exceptions import RayActorError

        cfg = self.config
        jobs = iter(jobs)
        more = True
        open_scenes: list[_SceneState] = []
        load = [0] * len(self.actors)
        in_flight: dict[ray.ObjectRef, tuple[int, _SceneState, WindowTask]] = {}
        to_stream: list[_SceneState] = []  # one-pass scenes waiting for a free actor
        streams: dict[ray.ObjectRefGenerator, tuple[int, _SceneState]] = {}
        while open_scenes or more:
            while (more and len(open_scenes) < max(1, cfg.open_scenes)
                   and not any(s.pending for s in open_scenes) and not to_stream):
                job = next(jobs, None)
                if job is None:
                    more = False
                else:
                    open_scenes.append(_SceneState(job, cfg.task_windows))
                    if reads_in_one_pass(self, job.spec.resampling):
                        open_scenes[-1].pending.clear()
                        to_stream.append(open_scenes[-1])
            for scene in list(to_stream):  # a pass takes a whole actor
                if scene.cancelled():  # before it started: nothing to stop
                    to_stream.remove(scene)
                    continue
                if min(load):
                    break
                slot = load.index(0)
                stream = self.actors[slot].run_pass.options(num_returns="streaming", max_task_retries=0).remote(
                    scene.job.spec, scene.start_pass(), cfg.pass_buffer_bytes)
                streams[stream] = (slot, scene)
                load[slot] += max(1, cfg.tasks_in_flight)
                scene.outstanding += 1
                to_stream.remove(scene)
            for scene in open_scenes:  # oldest scene first: its result is what the caller waits for
                while scene.pending and min(load) < max(1, cfg.tasks_in_flight) and not scene.cancelled():
                    slot = load.index(min(load))
                    task = scene.pending.popleft()
                    in_flight[self.actors[slot].run.remote(task)] = (slot, scene, task)
                    load[slot] += 1
                    scene.outstanding += 1
            finished = [s for s in open_scenes if s.finished and s not in to_stream]
            if finished:
                for scene in finished:
                    open_scenes.remove(scene)
                for scene in finished:
                    yield scene.outcome()
                continue
            if not in_flight and not streams:  # every scene drawn is done
                continue
            ready, _ = ray.wait([*in_flight, *streams], num_returns=1)
            for ref in ready:
                if ref in streams:
                    self._stream_step(ref, streams, load, to_stream)
                    continue
                slot, scene, task = in_flight.pop(ref)
                load[slot] -= 1
                scene.outstanding -= 1
                try:
                    res: TaskResult = ray.get(ref)
                except RayActorError as exc:  # Ray restarted the actor and retried the task max_attempts times
                    scene.fail(RuntimeError(f"task of {len(task.items)} windows failed {cfg.max_attempts} "
                                            f"times (workers dying): {exc}"))
                    continue
                except Exception as exc:  # the task raised (a read or detector error): its scene fails
                    scene.fail(exc)
                    continue
                if scene.error is None and not scene.cancelled():
                    scene.add(res, len(task.items))

    def _stream_step(self, stream, streams: dict, load: list[int], to_stream: list[_SceneState]) -> None:
        """Take the next result of a scene's one-pass stream (``run_pass``), or its end or error. A pass
        whose actor died goes back to ``to_stream`` (Ray restarts the actor), for the windows not yet
        back, until ``max_attempts`` passes have run."""
        import ray
        from ray.exceptions import RayActorError

        slot, scene = streams[stream]

        def end() -> None:
            del streams[stream]
            load[slot] -= max(1, self.config.tasks_in_flight)
            scene.outstanding -= 1

        try:
            res, windows = ray.get(next(stream))
        except StopIteration:
            end()
            return
        except Exception as exc:  # the pass raised (its scene fails), or its worker died
            end()
            if isinstance(exc, RayActorError) and scene.passes < self.config.max_attempts and not scene.cancelled():
                to_stream.append(scene)
            else:
                scene.fail(exc)
            return
        if scene.error is None and not scene.cancelled():
            scene.add(res, windows)
            scene.run.skipped += windows - len(res.detections)
        if scene.error is not None:  # failed or cancelled: stop the pass on its actor
            ray.cancel(stream)
            end()

    def worker_pids(self) -> list[int]:
        import ray

        return ray.get([a.pid.remote() for a in self.actors])

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
        if self._started_ray:
            ray.shutdown()

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def runs_in_process(detector_spec: DetectorSpec, config: PoolConfig) -> bool:
    """Whether ``make_pool`` gives the in-process pool (see the module docstring)."""
    return config.workers == 0 or (config.workers is None and config.ray_address is None
                                   and not local_gpus(detector_spec))


def make_pool(detector_spec: DetectorSpec, config: PoolConfig) -> InProcessPool | RayPool:
    """The pool that pays on this machine (see the module docstring): Ray only for GPUs, for actors
    asked for, or to join a cluster."""
    if runs_in_process(detector_spec, config):
        return InProcessPool(detector_spec, config)
    return RayPool(detector_spec, config)


def reads_in_one_pass(pool: InProcessPool | RayPool | tuple[DetectorSpec, PoolConfig], resampling: str) -> bool:
    """Whether ``pool`` (or the one ``make_pool`` gives for ``(detector_spec, config)``) reads a scene's
    exact pyramid in one pass (``serving.engine.pass_worker``), finding its empty windows itself.

    Before the pool exists its actor count is known only on this machine: a pool joining a cluster
    (``ray_address``) with ``ray_one_pass=None`` is assumed to read window by window (the plan then
    scans for empty windows, which a pass would also find: correct either way)."""
    if resampling != "exact":
        return False
    if isinstance(pool, InProcessPool):
        return pool.config.one_pass
    if isinstance(pool, RayPool):
        return pool.one_pass
    spec, config = pool
    if runs_in_process(spec, config):
        return config.one_pass
    actors = config.workers or (None if config.ray_address is not None else max(1, local_gpus(spec)))
    return config.ray_reads_in_one_pass(actors)


def local_gpus(detector_spec: DetectorSpec) -> int:
    """The GPUs of this machine that the detector would use (0 for detectors that never use one,
    which are decided without importing torch)."""
    if not uses_gpu(detector_spec):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
