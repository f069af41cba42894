"""One scene from its URI to merged bridges, and the bridges to files: the one path that
``hbdnet detect``, ``hbdnet batch`` and the service's jobs all take.

    detections = detect(uri, model, options, pool=pool, progress=..., cancel=...)
    notes = write(detections, [Path("bridges.gpkg")], model)

``detect`` is the composition of the modules that do the work, in order:

1. ``open_checked``: open the scene (``serving.engine.scene``) and check it against the options
   (bands it has, size within bounds) and the outputs it will be written to (GeoJSON needs a CRS),
   before any scan or worker;
2. ``prepare``: plan its windows (``serving.engine.reader``: band stretch, coverage), beside the
   workers' start-up when the call starts its own pool (``plan_beside_workers``);
3. the pool's run (``serving.engine.pools``): windows read and detected, with progress and cancel;
4. ``finish``: window boxes merged into scene boxes (``serving.merge``), kept to the scene's valid
   pixels (``serving.engine.valid_area``), then the score threshold, applied here and nowhere else.

``detect_many`` is the same path for many scenes through one pool's ``run_many`` (a batch), each
scene planned on a thread one scene ahead so that the workers do not wait. Neither warns: what a user
should hear about a scene (a striped layout, windows without a valid pixel, no CRS) comes back as
one-line ``notes``, which the CLI prints, the batch records and the service stores.
"""

from __future__ import annotations

import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from serving.engine.aoi import AoiError, AreaOfInterest, centres_inside
from serving.engine.pools import InProcessPool, PoolConfig, RayPool, make_pool, reads_in_one_pass
from serving.engine.reader import PyramidResampling, ScenePlan, empty_windows_notice, plan_scene, select_bands
from serving.engine.scene import (
    DEFAULT_MAX_PIXELS,
    SceneError,
    SceneInfo,
    check_scene_size,
    open_scene,
    regridded,
    scene_reference,
)
from serving.engine.tasks import Cancel, PoolRun, Progress, SceneJob
from serving.engine.valid_area import keep_on_valid_pixels
from serving.merge.config import MergeConfig
from serving.merge.window_detections import WindowDetections
from serving.model_ref import ModelRef
from serving.outputs.formats import OutputError, check_output_path, fsync_path
from serving.resolution import Resolution, ResolutionPlan, check_resolution, plan_resolution

Pool = InProcessPool | RayPool
T = TypeVar("T")


@dataclass(frozen=True)
class DetectOptions:
    """What, besides the model, shapes a scene's bridges; checked when made (``ValueError``).

    ``score_thr``: merged bridges scoring below it are dropped (None: the model's stored operating
    point, else 0). ``bands``: 1-based bands used as R,G,B (or one band as grey; None: the first
    three). ``max_pixels``: larger scenes are refused. ``merge_config``: how window boxes are merged
    (None: the holistic merge's defaults). ``resampling``: how pyramid levels are made. ``aoi``: the
    area to search (None: the whole scene); windows that do not meet it are not run, bridges whose
    centre lies outside it are dropped. ``gsd``: the scene's metres a pixel (None: from its CRS).
    ``resolution``: the finest level's metres a pixel (None: the scene resampled into the model's range;
    ``"native"``: the scene's own pixels; ``serving.resolution``).
    """

    score_thr: float | None = None
    bands: tuple[int, ...] | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    merge_config: MergeConfig | None = None
    resampling: PyramidResampling = "exact"
    aoi: AreaOfInterest | None = None
    gsd: float | None = None
    resolution: Resolution = None

    def __post_init__(self) -> None:
        if self.score_thr is not None and not 0.0 <= self.score_thr <= 1.0:
            raise ValueError(f"score threshold must be in [0, 1], got {self.score_thr}")
        if self.bands is not None:
            object.__setattr__(self, "bands", tuple(int(b) for b in self.bands))
            if len(self.bands) not in (1, 3) or min(self.bands) < 1:
                raise ValueError(f"give 1 band or 3 bands (R,G,B), numbered from 1, got {self.bands}")
        if self.max_pixels < 1:
            raise ValueError(f"max pixels must be 1 or more, got {self.max_pixels}")
        if self.resampling not in ("exact", "overview"):
            raise ValueError(f"resampling must be 'exact' or 'overview', got {self.resampling!r}")
        if self.gsd is not None and not 0 < self.gsd < float("inf"):
            raise ValueError(f"a ground sample distance must be metres a pixel above 0, got {self.gsd}")
        object.__setattr__(self, "resolution", check_resolution(self.resolution))

    def check(self, info: SceneInfo) -> None:
        """``SceneError`` (one line) when the scene lacks the bands asked for or its size is out of bounds."""
        select_bands(info, self.bands)
        check_scene_size(info, self.max_pixels)


@dataclass
class SceneResult:
    """Merged bridges of a scene in full-resolution scene pixels, at or above the score threshold.

    ``boxes`` (N, 5) le90, ``scores`` (N,), ``labels`` (N,), ``levels`` (N,) the pyramid level each box
    came from. ``uri`` is the scene as asked for. ``window_detections`` are the workers' raw results in
    plan order (window pixels of the grid the scene was read on, ``resolution``). ``timings`` in
    seconds: open, plan (band stretch and coverage included), startup (workers started for this
    scene, beside the plan), stream (wall time of reading +
    detecting), read and detect (summed over workers), merge, total. ``started`` and ``finished``:
    wall clock (``time.time()``) of the scene's first task start and last task end on the workers.
    ``nodes``: windows run on each Ray node, by node id (``PoolRun.nodes``; empty in this process).
    ``resolution``: the grid the scene was read on (resampled, cropped to the area of interest).
    ``notes``: one line each.
    """

    uri: str
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    levels: np.ndarray
    scene: SceneInfo
    score_thr: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    windows: int = 0  # windows in the plan
    skipped: int = 0  # windows left out because they hold no valid pixel
    dropped: int = 0  # merged boxes dropped: centre outside the scene or on an invalid pixel
    clipped: int = 0  # merged boxes cut to the scene where they overhung it
    aoi: str | None = None  # the area of interest searched (its label); None: the whole scene
    outside_windows: int = 0  # windows not run: they do not meet the area of interest
    outside_bridges: int = 0  # bridges at or above the threshold dropped: centre outside the area
    resolution: ResolutionPlan = field(default_factory=ResolutionPlan)
    started: float = 0.0
    finished: float = 0.0
    notes: list[str] = field(default_factory=list)
    window_detections: list[WindowDetections] = field(default_factory=list)
    nodes: dict[str, int] = field(default_factory=dict)


@dataclass
class PreparedScene:
    """A scene opened and planned, ready for a pool: ``timings`` so far, from ``t_start``
    (``time.perf_counter()``); ``notes`` what planning found to say (one line each). ``resolution``:
    the grid the plan is on (``working``: the scene as read, ``info`` itself unless it is resampled)."""

    uri: str
    info: SceneInfo
    plan: ScenePlan
    t_start: float
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    resolution: ResolutionPlan = field(default_factory=ResolutionPlan)
    working: SceneInfo | None = None

    @property
    def grid(self) -> SceneInfo:
        """The scene as the plan's windows see it."""
        return self.working if self.working is not None else self.info


def check_outputs(info: SceneInfo, outputs: Sequence[Path]) -> None:
    """``OutputError`` when the scene cannot be written to one of ``outputs``: GeoJSON is WGS84
    longitude/latitude, so a scene without a CRS cannot go there."""
    for output in outputs:
        if Path(output).suffix.lower() == ".geojson" and info.crs is None:
            raise OutputError(f"cannot write {output}: scene {info.uri} has no CRS and GeoJSON must be WGS84 "
                              "longitude/latitude; write .gpkg or .fgb to get pixel coordinates")


def open_checked(uri: str, options: DetectOptions, outputs: Sequence[Path] = ()) -> SceneInfo:
    """Check that ``outputs`` can be written (``check_output_path``), open the scene and check it
    (``DetectOptions.check``, ``check_outputs``): the cheap checks, made before any scan or worker.
    ``SceneError`` / ``OutputError``, one line."""
    for output in outputs:
        check_output_path(Path(output))
    info = open_scene(uri)
    options.check(info)
    check_outputs(info, outputs)
    return info


def prepare(uri: str, info: SceneInfo, model: ModelRef, options: DetectOptions, *,
            coverage_scan: bool = True) -> PreparedScene:
    """Plan the windows of an opened scene (band stretch and coverage scans; ``coverage_scan=False``
    for a pool that finds the empty windows in its one pass). Nothing is warned (``notes``), so a
    scene may be planned on a thread beside the one that runs the workers."""
    t = time.perf_counter()
    aoi = options.aoi
    try:
        area = aoi.in_pixels(info.crs, info.transform) if aoi is not None else None
        resolution = plan_resolution(info, model.gsd, gsd=options.gsd, resolution=options.resolution,
                                     window=model.window, area_px=area)
        working = regridded(info, resolution.regrid)
        area_px = aoi.in_pixels(working.crs, working.transform) if aoi is not None else None  # on the grid read
    except AoiError as exc:
        raise SceneError(f"{uri}: {exc}") from None
    plan = plan_scene(working, bands=options.bands, window=model.window, overlap=model.overlap,
                      resampling=options.resampling, coverage_scan=coverage_scan, area_px=area_px,
                      levels=resolution.levels)
    notes = [_one_line(str(w)) for w in plan.warnings]
    return PreparedScene(uri, info, plan, t, {"plan": time.perf_counter() - t}, notes, resolution, working)


def finish(prepared: PreparedScene, run: PoolRun, model: ModelRef, options: DetectOptions) -> SceneResult:
    """Merge the pool's window detections into scene boxes, keep them to the scene's valid pixels
    (boxes centred outside the scene or on nodata are dropped, boxes overhanging it clipped), then drop
    those scoring under the threshold."""
    timings = dict(prepared.timings)
    notes = list(prepared.notes)
    if run.skipped:  # windows a one-pass read found empty (planned without a coverage scan)
        notes.append(_one_line(str(empty_windows_notice(prepared.uri, run.skipped, len(prepared.plan.items)))))
    t = time.perf_counter()
    if any(len(d.scores) for d in run.detections):
        from serving.merge.methods import merge  # torch: imported only when there is something to merge

        merged = merge(run.detections, options.merge_config if options.merge_config is not None else MergeConfig())
        boxes, scores, labels, levels = merged.boxes, merged.scores, merged.labels, merged.levels
    else:
        boxes = np.zeros((0, 5), np.float64)
        scores, labels, levels = np.zeros(0, np.float64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    kept = keep_on_valid_pixels(boxes, prepared.grid, prepared.plan.spec, prepared.plan.coverage)
    scores, labels, levels = scores[kept.keep], labels[kept.keep], levels[kept.keep]
    score_thr = model.score_threshold(options.score_thr)
    keep = scores >= score_thr
    area_px = prepared.plan.area_px
    inside = centres_inside(area_px, kept.boxes[:, :2]) if area_px is not None else np.ones(len(keep), bool)
    outside_bridges = int((keep & ~inside).sum())
    keep &= inside
    timings["merge"] = time.perf_counter() - t
    timings["read"] = run.read_s
    timings["detect"] = run.detect_s
    timings["total"] = time.perf_counter() - prepared.t_start
    return SceneResult(
        uri=prepared.uri,
        boxes=regrid.to_scene(kept.boxes[keep]) if (regrid := prepared.resolution.regrid) else kept.boxes[keep],
        scores=scores[keep],
        labels=labels[keep],
        levels=levels[keep],
        scene=prepared.info,
        score_thr=score_thr,
        timings=timings,
        windows=len(prepared.plan.plan),
        skipped=len(prepared.plan.skipped) + run.skipped,
        dropped=int((~kept.keep).sum()),
        clipped=kept.clipped,
        aoi=options.aoi.label if options.aoi is not None else None,
        outside_windows=len(prepared.plan.outside),
        outside_bridges=outside_bridges,
        resolution=prepared.resolution,
        started=run.started,
        finished=run.finished,
        notes=notes,
        window_detections=run.detections,
        nodes=dict(run.nodes),
    )


def plan_beside_workers(plan: Callable[[], PreparedScene], start: Callable[[], Pool]) -> tuple[PreparedScene, Pool, float]:
    """Run ``plan`` (the scene's stretch and coverage scans: seconds on a large uint16 or masked
    scene) on a thread while ``start`` starts the workers here (``ray.init`` sets its signal
    handlers from the main thread only). Returns the plan, the pool and the seconds ``start`` took.
    If either fails the other is waited for, a started pool is closed, and the error raised."""
    with ThreadPoolExecutor(1, thread_name_prefix="hbdnet-plan") as planner:
        planning = planner.submit(plan)
        t = time.perf_counter()
        pool = start()
        startup = time.perf_counter() - t
        try:
            prepared = planning.result()
        except BaseException:
            pool.close()
            raise
    return prepared, pool, startup


def detect(
    uri: str,
    model: ModelRef,
    options: DetectOptions = DetectOptions(),
    *,
    outputs: Sequence[Path] = (),
    pool: Pool | None = None,
    pool_config: PoolConfig = PoolConfig(),
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    on_plan: Callable[[PreparedScene], None] | None = None,
) -> SceneResult:
    """The bridges of the scene at ``uri`` (path, /vsicurl/ or http(s) URL, s3:// URL).

    ``pool`` runs the windows and stays open (a service, a batch); without one, workers described by
    ``pool_config`` are started for this scene (planned meanwhile) and closed after it
    (``make_pool``: one Ray actor per GPU, or this process on a machine without one). ``outputs``: the
    files the caller will ``write``, checked against the scene first. ``progress(done, total)`` as
    windows complete; ``cancel()`` answering True stops the scene (``Cancelled``); ``on_plan(prepared)``
    once the scene is planned and the workers are up, before the windows run.
    Raises ``SceneError`` and ``OutputError`` with one-line messages.
    """
    t_start = time.perf_counter()
    info = open_checked(uri, options, outputs)  # a bad scene fails here, before any worker starts
    opened = time.perf_counter() - t_start

    def plan() -> PreparedScene:
        # A pool that reads in one pass finds the empty windows itself: no coverage scan before it starts.
        one_pass = reads_in_one_pass(pool if pool is not None else (model.spec, pool_config), options.resampling)
        return prepare(uri, info, model, options, coverage_scan=not one_pass)

    own_pool = pool is None
    if pool is None:
        prepared, pool, startup = plan_beside_workers(plan, lambda: make_pool(model.spec, pool_config))
    else:
        prepared, startup = plan(), 0.0
    prepared.t_start = t_start
    prepared.timings.update(open=opened, startup=startup)
    try:
        if on_plan is not None:
            on_plan(prepared)
        t = time.perf_counter()
        run = pool.run(prepared.plan.spec, prepared.plan.items, progress, cancel=cancel)
        prepared.timings["stream"] = time.perf_counter() - t
    finally:
        if own_pool:
            pool.close()
    return finish(prepared, run, model, options)


@dataclass
class SceneRequest:
    """One scene of ``detect_many``: its URI, the outputs it will be written to (checked first), and
    the caller's hooks and handle (``key``, never looked at here)."""

    uri: str
    outputs: Sequence[Path] = ()
    progress: Progress | None = None
    on_plan: Callable[[PreparedScene], None] | None = None
    key: object = None


def detect_many(requests: Iterable[SceneRequest], model: ModelRef, options: DetectOptions,
                pool: Pool) -> Iterator[tuple[SceneRequest, SceneResult | Exception]]:
    """``detect`` for many scenes through one open ``pool`` (its ``run_many``: with Ray, several scenes
    in flight at once). Each scene is opened, checked and planned on a thread while the pool runs the
    one before; a scene that fails (to open, to plan, in a worker, to merge) comes back with its error
    and the others go on. Results come in completion order; ``KeyboardInterrupt`` propagates."""
    failed: deque[tuple[SceneRequest, Exception]] = deque()

    def jobs() -> Iterator[SceneJob]:
        planner = ThreadPoolExecutor(1, thread_name_prefix="hbdnet-plan")
        ahead: deque[tuple[SceneRequest, Future[PreparedScene]]] = deque()
        pending = iter(requests)

        def plan(request: SceneRequest) -> PreparedScene:
            t = time.perf_counter()
            info = open_checked(request.uri, options, request.outputs)
            prepared = prepare(request.uri, info, model, options)
            prepared.timings["open"] = prepared.t_start - t
            prepared.t_start = t
            return prepared

        def plan_next() -> None:
            request = next(pending, None)
            if request is not None:
                ahead.append((request, planner.submit(plan, request)))

        try:
            plan_next()
            while ahead:
                request, future = ahead.popleft()
                plan_next()
                try:
                    prepared = future.result()
                except Exception as exc:
                    failed.append((request, exc))
                    continue
                if request.on_plan is not None:
                    request.on_plan(prepared)
                yield SceneJob(prepared.plan.spec, prepared.plan.items, progress=request.progress,
                               key=(request, prepared))
        finally:  # an interrupted run does not wait for a plan nobody will use
            planner.shutdown(wait=False, cancel_futures=True)

    for job, run in pool.run_many(jobs()):
        while failed:
            yield failed.popleft()
        request, prepared = job.key  # type: ignore[misc]
        if isinstance(run, Exception):  # a worker could not read or detect this scene
            yield request, run
            continue
        try:
            result: SceneResult | Exception = finish(prepared, run, model, options)
        except Exception as exc:
            result = exc
        yield request, result
    while failed:
        yield failed.popleft()


def write(detections: SceneResult, outputs: Sequence[Path], model: ModelRef, *,
          scene_label: str | None = None) -> list[str]:
    """Write the bridges to each of ``outputs`` (format from the extension; a file is renamed into
    place complete, then synced to disk with its folder). The ``scene`` attribute says ``scene_label``
    (default: the scene's URI, a local path made absolute). Returns the scene's notes, with those of
    the writing added (no CRS: pixel coordinates), one line each. ``OutputError``, one line."""
    from serving.outputs.geo_output import write_detections  # GDAL and torch: only where bridges are written

    label = scene_label if scene_label is not None else scene_reference(detections.uri)
    info = detections.scene
    notes = list(detections.notes)
    for output in outputs:
        output = Path(output)
        _noting(notes, lambda: write_detections(
            output, detections.boxes, detections.scores, detections.labels, detections.levels,
            transform=info.transform, crs=info.crs, scene=label, model=model.label,
            class_names=model.class_names, searched=detections.aoi))
        fsync_path(output)
        fsync_path(output.parent)  # the rename into place
    return notes


def _noting(notes: list[str], step: Callable[[], T]) -> T:
    """Run ``step``, adding the serving warnings it raises to ``notes`` as one-line notes, without
    repeats; any other warning is passed on as it came."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            return step()
    finally:  # outside catch_warnings, so that the warnings passed on are not caught again
        for w in caught:
            if issubclass(w.category, UserWarning) and w.category.__module__.startswith("serving."):
                line = _one_line(str(w.message))
                if line not in notes:
                    notes.append(line)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _one_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0] if text else ""
