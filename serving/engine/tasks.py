"""A scene's windows as tasks for the workers, and the bookkeeping of a scene in a pool.

Tasks carry window descriptors, never pixels: a ``WindowTask`` is the scene's ``ReadSpec`` (uri,
bands, stretch, GDAL cache) and a short run of plan windows of one level and one row. A
``SceneState`` follows one scene through a pool's dispatch loop: the tasks still to submit, the
results so far keyed by plan index (so results do not depend on scheduling), progress, cancelling.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from serving.engine.reader import ReadItem, ReadSpec
from serving.merge.window_detections import WindowDetections

Progress = Callable[[int, int], None]  # (windows done, windows total)
Cancel = Callable[[], bool]  # True: stop dispatching the scene's windows


class Cancelled(Exception):
    """The scene's ``cancel`` answered True: its remaining windows were not run."""


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
    node: str = ""  # the Ray node that ran the windows ("" in the calling process)


@dataclass
class PoolRun:
    """Window detections in plan order, and where the time went (read/detect summed over workers).

    ``started`` and ``finished``: wall clock (``time.time()``) of the scene's first task start and
    last task end on the workers; 0.0 for a scene with no window to read. ``nodes``: the windows the
    detector ran on each Ray node (its node id), each counted once however often its task was sent;
    empty when they ran in the calling process.
    """

    detections: list[WindowDetections]
    read_s: float = 0.0
    detect_s: float = 0.0
    started: float = 0.0
    finished: float = 0.0
    skipped: int = 0  # windows found without a valid pixel while reading (one-pass reads), not run
    nodes: dict[str, int] = field(default_factory=dict)


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


class SceneState:
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
        self.lost: dict[WindowTask, int] = {}  # tasks whose worker was lost, and how often (``RayPool``)

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
        if res.node:
            run.nodes[res.node] = run.nodes.get(res.node, 0) + len(res.detections)
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
