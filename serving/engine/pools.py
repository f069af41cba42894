"""Pools of model workers (``serving.engine.worker``): the windows of scenes run in this process or in
Ray actors.

Tasks carry window descriptors, never pixels: a ``WindowTask`` is the scene's ``ReadSpec`` (uri, bands,
stretch, GDAL cache) and a short run of plan windows of one level and one row. Each worker opens the
scene itself, keeps it open across tasks, reads its windows and runs batched inference. The same
``WindowWorker`` class does this in-process (``workers=0``) and inside every Ray actor. In process,
an exact pyramid is read instead in one pass over the scene (``PoolConfig.one_pass``,
``serving.engine.worker``: every level from one decode, the same pixels). A Ray pool of one
actor (one GPU) does the same, each scene in one pass on its actor, its results streamed back (pixels
still go only from the actor's reader to its detector); several actors read window by window, so that
one scene keeps them all busy (``PoolConfig.ray_one_pass`` chooses).

Where the windows run (``make_pool``): in this process, with read-ahead threads, unless Ray pays for
itself: when the detector can use GPUs and this machine has some, when ``workers`` asks for actors,
or when ``ray_address`` joins a cluster. On a machine without a GPU Ray would only add its processes
(about 0.8 GB) and seconds of start-up for no speed-up, so the default there is in-process.

Ray pool: one actor per GPU (``num_gpus=1``) when the cluster has GPUs and the detector can use them,
else ``workers`` CPU actors (default one actor holding every CPU of a node for torch's threads; n actors
share the CPUs, each with no more than lets all n fit on the cluster's nodes: ``cpus_per_actor``). At
most ``tasks_in_flight`` tasks per actor are outstanding (backpressure: windows are read only as fast as
the detector consumes them). Each actor's results name its Ray node (``PoolRun.nodes``).

Lost workers. An actor whose process dies (the OOM killer) or whose node does (a machine lost) is
restarted by Ray wherever the cluster has room (``max_restarts = max_attempts - 1``), but its tasks are
not retried on it (``max_task_retries=0``): they go to the actors that are up, at most ``max_attempts``
times each, and the lost actor gets work again once it answers. A restarted actor may never come back
(its node gone, and no surviving node with the CPUs or GPU it asks for, all held by the other actors),
and tasks queued for it would wait forever. While every actor is lost, work waits for one to come back
at most ``start_timeout_s``, then its scenes fail with the reason (and later scenes at once, until one
is back). A task that raises is not retried: it fails its scene. Results are keyed by plan index and
returned in plan order, so they do not depend on the number of workers, on scheduling or on a task
run twice.

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
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

from serving.engine.detectors import DetectorSpec, local_gpus
from serving.engine.gdal_errors import first_line
from serving.engine.pyramid_pass import DEFAULT_BUFFER_BYTES
from serving.engine.reader import ReadItem, ReadSpec
from serving.engine.scene import remote_access
from serving.engine.tasks import Cancel, JobResult, PoolRun, Progress, SceneJob, SceneState, TaskResult, WindowTask
from serving.engine.worker import WindowWorker, run_scene_in_one_pass

log = logging.getLogger(__name__)


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
    max_attempts: int = 3  # per task, counting lost workers; and each actor's restarts (max_attempts - 1)
    # Actors not up by then: the cluster lacks the resources asked for. Also how long work waits for a
    # lost actor to come back while none is up.
    start_timeout_s: float = 300.0
    # In-process pool, exact pyramid: every level from one decode of the scene
    # (``serving.engine.worker``) instead of one exact read per window (6-7 decodes).
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


def _lost_worker_errors() -> tuple[type[Exception], ...]:
    """What a task's result raises when its worker was lost, not when the task failed: its actor's process
    or node died or cannot be reached (``RayActorError``, ``ActorUnavailableError`` among them), or the
    result was lost with its node's object store."""
    from ray.exceptions import ObjectLostError, RayActorError

    return RayActorError, ObjectLostError


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
            scene = SceneState(job, self.config.task_windows)
            if self.config.one_pass and job.spec.resampling == "exact":
                run_scene_in_one_pass(self._worker.detector, self._worker.batch_size, scene,
                                      self.config.pass_buffer_bytes)
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


class RayWindowWorker(WindowWorker):
    """``WindowWorker`` as a Ray actor: its results name the node they ran on (``PoolRun.nodes``), so that
    a run can say how a cluster shared its windows."""

    def __init__(self, *args, **kwargs):
        import ray

        super().__init__(*args, **kwargs)
        self.node = ray.get_runtime_context().get_node_id()

    def run(self, task: WindowTask) -> TaskResult:
        res = super().run(task)
        res.node = self.node
        return res

    def run_pass(self, spec: ReadSpec, items: tuple[ReadItem, ...],
                 buffer_bytes: int) -> Iterator[tuple[TaskResult, int]]:
        for res, windows in super().run_pass(spec, items, buffer_bytes):
            res.node = self.node
            yield res, windows


class RayPool:
    """Ray actors running ``WindowWorker``; see the module docstring for placement and retries."""

    def __init__(self, detector_spec: DetectorSpec, config: PoolConfig = PoolConfig()):
        import ray

        self.config = config
        self._detector_spec = detector_spec
        # The driver's way of reading URLs (hbdnet serve: its timeouts, its href proxy on loopback). A
        # worker on another machine of a cluster cannot reach that proxy, so there it reads directly.
        self._remote = remote_access()
        if config.ray_address is not None:
            self._remote = replace(self._remote, proxy=None)
        local_cpus = max(os.cpu_count() or 1, config.workers or 0)
        self._started_ray = ensure_ray(config.ray_address, local_cpus)
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if gpus and detector_spec.uses_gpu:
            n = config.workers or gpus
            options = {"num_gpus": 1, "num_cpus": 1}
        else:
            # Without a GPU, one actor by default, with every CPU as torch threads: one copy of the
            # model in memory (a CPU model's activations are most of a worker's footprint) and the
            # same throughput as several single-threaded actors. Ray sets OMP_NUM_THREADS to num_cpus.
            n = config.workers or 1
            free = int(ray.available_resources().get("CPU", 1))  # other pools may hold some
            node_cpus = [int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node["Alive"]]
            options = {"num_cpus": cpus_per_actor(n, free, node_cpus)}
        # Ray restarts a lost actor wherever the cluster has room; its tasks are not retried on it but sent
        # to the actors that are up (``_task_lost``), since it may never come back.
        self._actor_class = ray.remote(**options, max_restarts=max(0, config.max_attempts - 1),
                                       max_task_retries=0)(RayWindowWorker)
        self.actors = [self._new_actor() for _ in range(n)]
        self._up = [True] * n  # answered and not lost since: tasks go to these only
        self._probes: dict[ray.ObjectRef, int] = {}  # lost actors' ``pid`` calls: they answer once back up
        self._no_actor: str | None = None  # why work failed the last time every actor was lost
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
                                        self.config.read_threads, self._remote)

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
        A task whose worker is lost goes to another actor that is up (``_task_lost``).
        """
        import ray

        cfg = self.config
        jobs = iter(jobs)
        more = True
        open_scenes: list[SceneState] = []
        load = [0] * len(self.actors)
        in_flight: dict[ray.ObjectRef, tuple[int, SceneState, WindowTask]] = {}
        to_stream: list[SceneState] = []  # one-pass scenes waiting for a free actor
        streams: dict[ray.ObjectRefGenerator, tuple[int, SceneState]] = {}
        while open_scenes or more:
            while (more and len(open_scenes) < max(1, cfg.open_scenes)
                   and not any(s.pending for s in open_scenes) and not to_stream):
                job = next(jobs, None)
                if job is None:
                    more = False
                else:
                    open_scenes.append(SceneState(job, cfg.task_windows))
                    if reads_in_one_pass(self, job.spec.resampling):
                        open_scenes[-1].pending.clear()
                        to_stream.append(open_scenes[-1])
            for scene in list(to_stream):  # a pass takes a whole actor
                if scene.cancelled():  # before it started: nothing to stop
                    to_stream.remove(scene)
                    continue
                slot = self._free_actor(load, 1)
                if slot is None:
                    break
                stream = self.actors[slot].run_pass.options(num_returns="streaming").remote(
                    scene.job.spec, scene.start_pass(), cfg.pass_buffer_bytes)
                streams[stream] = (slot, scene)
                load[slot] += max(1, cfg.tasks_in_flight)
                scene.outstanding += 1
                to_stream.remove(scene)
            for scene in open_scenes:  # oldest scene first: its result is what the caller waits for
                while scene.pending and not scene.cancelled():
                    slot = self._free_actor(load, max(1, cfg.tasks_in_flight))
                    if slot is None:
                        break
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
            if not in_flight and not streams:
                if to_stream or any(s.pending for s in open_scenes):  # work waits, and no actor is up
                    self._wait_for_an_actor(open_scenes, to_stream)
                continue  # else every scene drawn is done: draw the next
            ready, _ = ray.wait([*in_flight, *streams, *self._probes], num_returns=1)
            for ref in ready:
                if ref in self._probes:
                    self._probe_back(ref)
                elif ref in streams:
                    self._stream_step(ref, streams, load, to_stream)
                else:
                    self._task_back(ref, in_flight, load)

    def _task_back(self, ref, in_flight: dict, load: list[int]) -> None:
        """Take a task's result, or its error: a task that raised fails its scene; one whose worker was
        lost goes back to its scene's queue (``_task_lost``)."""
        import ray

        slot, scene, task = in_flight.pop(ref)
        load[slot] -= 1
        scene.outstanding -= 1
        try:
            res: TaskResult = ray.get(ref)
        except _lost_worker_errors() as exc:
            self._lose(slot)
            self._task_lost(scene, task, exc)
            return
        except Exception as exc:  # the task raised (a read or detector error): its scene fails
            scene.fail(exc)
            return
        if scene.error is None and not scene.cancelled():
            scene.add(res, len(task.items))

    def _task_lost(self, scene: SceneState, task: WindowTask, exc: Exception) -> None:
        """A task whose actor died, or whose node did, goes to the front of its scene's queue, for any
        actor that is up; Ray does not retry it on its own actor (``max_task_retries=0``): that actor
        may never come back (its node gone, and no other node with the resources it asks for), and a
        task queued for it would wait forever. Its results may have been computed already; running it
        again is harmless, as results are kept by window. ``max_attempts`` losses fail the scene."""
        if scene.error is not None or scene.cancelled():
            return
        lost = scene.lost[task] = scene.lost.get(task, 0) + 1
        if lost >= self.config.max_attempts:
            scene.fail(RuntimeError(f"task of {len(task.items)} windows lost its worker {lost} times (workers or "
                                    f"their nodes dying): {first_line(exc)}"))
        else:
            scene.pending.appendleft(task)

    def _free_actor(self, load: list[int], limit: int) -> int | None:
        """The least loaded actor that is up and has fewer than ``limit`` tasks in flight; None if none."""
        free = [i for i, up in enumerate(self._up) if up and load[i] < limit]
        return min(free, key=load.__getitem__) if free else None

    def _lose(self, slot: int) -> None:
        """The actor of ``slot`` lost its process or node: no task goes to it until it answers again
        (Ray restarts it where the cluster has room, if anywhere)."""
        if self._up[slot]:
            self._up[slot] = False
            self._probes[self._probe(slot)] = slot

    def _probe(self, slot: int):
        # Retried by Ray across restarts: it answers once the actor is up again, or fails once it is dead.
        return self.actors[slot].pid.options(max_task_retries=-1).remote()

    def _probe_back(self, ref) -> None:
        """An actor that was lost answered (it is up again), or is gone for good (restarts used up)."""
        import ray
        from ray.exceptions import ActorDiedError

        slot = self._probes.pop(ref)
        try:
            ray.get(ref)
        except ActorDiedError:
            return
        except _lost_worker_errors():  # unreachable still: ask again
            self._probes[self._probe(slot)] = slot
            return
        self._up[slot] = True
        self._no_actor = None

    def _wait_for_an_actor(self, open_scenes: list[SceneState], to_stream: list[SceneState]) -> None:
        """Work waits and every actor was lost: wait for one to come back, at most ``start_timeout_s``
        (not at all when the last such wait ran out), then fail the waiting scenes with the reason
        rather than wait forever for an actor the cluster may have no room for. A scene cancelled
        meanwhile ends the wait (the caller yields it)."""
        import ray

        deadline = time.monotonic() + (0 if self._no_actor else self.config.start_timeout_s)
        ready: list = []
        while self._probes and not ready:
            step = max(0.0, min(1.0, deadline - time.monotonic()))  # a second at most: cancelling is checked
            ready = ray.wait(list(self._probes), num_returns=1, timeout=step)[0]
            if time.monotonic() >= deadline or any(s.cancelled() for s in open_scenes):
                break
        for ref in ready:
            self._probe_back(ref)
        if any(self._up) or (ready and self._probes) or any(s.finished for s in open_scenes):
            return  # one is back, another may still come, or a scene was cancelled
        if self._no_actor is None:
            why = (f"none came back within {self.config.start_timeout_s:.0f} s" if self._probes
                   else "none can come back (restarts used up)")
            self._no_actor = (f"every one of the {len(self.actors)} workers was lost (their processes or nodes died) "
                              f"and {why}; cluster resources free now: {ray.available_resources()}")
        for scene in open_scenes:
            scene.fail(RuntimeError(self._no_actor))
        to_stream.clear()

    def _stream_step(self, stream, streams: dict, load: list[int], to_stream: list[SceneState]) -> None:
        """Take the next result of a scene's one-pass stream (``run_pass``), or its end or error. A pass
        whose actor died goes back to ``to_stream``, for the windows not yet back, on whichever actor is
        up first, until ``max_attempts`` passes have run."""
        import ray

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
            lost = isinstance(exc, _lost_worker_errors())
            if lost:
                self._lose(slot)
            if lost and scene.passes < self.config.max_attempts and not scene.cancelled():
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
        """The actors' process ids, each once it is up (an actor Ray is restarting is waited for)."""
        import ray

        return ray.get([self._probe(slot) for slot in range(len(self.actors))])

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


def cpus_per_actor(actors: int, free_cpus: int, node_cpus: Sequence[int]) -> int:
    """CPUs for each of ``actors`` CPU actors: an equal share of the cluster's ``free_cpus``, lowered until
    they all fit on its nodes (``node_cpus``: each node's CPUs), since an actor runs on one node. On one
    machine, the equal share; on four 8-CPU nodes, 1 actor gets 8 (the cluster's 32 no node has, and the
    pool would never start) and 6 actors get 4 each (with 5, only 4 of them would find a place)."""
    share = max(1, free_cpus // max(1, actors))
    while share > 1 and sum(c // share for c in node_cpus) < actors:
        share -= 1
    return share


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
    exact pyramid in one pass (``serving.engine.worker``), finding its empty windows itself.

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
