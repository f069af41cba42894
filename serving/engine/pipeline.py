"""The large-scene engine: open, plan, stream windows through the workers, merge.

``detect_scene`` is the whole path of design.md in one call: ``prepare_scene`` (open, plan), the
pool's run, ``finish_scene`` (merge, then boxes kept to the scene's valid pixels:
``serving.engine.valid_area``); a batch calls the two halves itself around the pool's
``run_many``. It is a composition of the modules that do the work: ``serving.engine.scene`` (what the
raster is), ``serving.engine.reader`` (the plan and the reads), ``serving.engine.workers`` (where the detector
runs) and ``serving.merge.methods`` (window boxes to scene boxes).
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from serving.engine.detectors import DetectorSpec
from serving.merge.config import MergeConfig
from serving.engine.reader import PyramidResampling, ScenePlan, empty_windows_notice, plan_scene, select_bands
from serving.engine.scene import DEFAULT_MAX_PIXELS, SceneInfo, check_scene_size, open_scene
from serving.engine.valid_area import keep_on_valid_pixels
from serving.engine.window_detections import WindowDetections
from serving.engine.workers import (InProcessPool, PoolConfig, PoolRun, Progress, RayPool, make_pool,
                                    reads_in_one_pass)


@dataclass
class SceneResult:
    """Merged detections of a scene in full-resolution scene pixels.

    ``boxes`` (N, 5) le90, ``scores`` (N,), ``labels`` (N,), ``levels`` (N,) the pyramid level each box
    came from. ``window_detections`` are the workers' raw results in plan order (window pixels).
    ``timings`` in seconds: open, plan (band stretch and coverage included), startup (workers, started
    beside the plan), stream (wall time of reading + detecting), read and detect (summed over
    workers), merge, total.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    levels: np.ndarray
    scene: SceneInfo
    timings: dict[str, float] = field(default_factory=dict)
    windows: int = 0  # windows in the plan
    skipped: int = 0  # windows left out because they hold no valid pixel
    dropped: int = 0  # merged boxes dropped: centre outside the scene or on an invalid pixel
    clipped: int = 0  # merged boxes cut to the scene where they overhung it
    window_detections: list[WindowDetections] = field(default_factory=list)


@dataclass
class PreparedScene:
    """A scene opened and planned, ready for a pool: ``timings`` so far (open, plan), from ``t_start``
    (``time.perf_counter()``)."""

    info: SceneInfo
    plan: ScenePlan
    t_start: float
    timings: dict[str, float] = field(default_factory=dict)


def prepare_scene(scene: str | SceneInfo, *, bands: Sequence[int] | None = None, window: int = 1024,
                  overlap: int = 200, resampling: PyramidResampling = "exact",
                  max_pixels: int = DEFAULT_MAX_PIXELS, coverage_scan: bool = True) -> PreparedScene:
    """Open the scene (unless given opened), check its size (``check_scene_size``: ``SceneError`` for a
    scene under 32 px a side or over ``max_pixels``) and plan its windows (band stretch and coverage scans;
    ``coverage_scan=False`` for a pool that finds empty windows in its one pass, ``reads_in_one_pass``).

    Nothing is warned here (``prepared.plan.warnings`` holds it), so a scene may be planned on a
    thread beside the one that runs the workers."""
    t_start = time.perf_counter()
    info = open_scene(scene) if isinstance(scene, str) else scene
    check_scene_size(info, max_pixels)
    t = time.perf_counter()
    scene_plan = plan_scene(info, bands=bands, window=window, overlap=overlap, resampling=resampling,
                            coverage_scan=coverage_scan)
    return PreparedScene(info, scene_plan, t_start,
                         {"open": t - t_start, "plan": time.perf_counter() - t})


def plan_summary(prepared: PreparedScene) -> str:
    """One line: the scene's size and the windows to run per pyramid level (and those skipped)."""
    info, plan = prepared.info, prepared.plan
    counts = Counter(item.window.level for item in plan.items)
    levels = ", ".join(f"level {lv} (1/{2**lv}) {n}" for lv, n in sorted(counts.items()))
    n = len(plan.items)
    line = f"{info.width} x {info.height} px, {n} window{'' if n == 1 else 's'} to run"
    if levels:
        line += f": {levels}"
    if plan.skipped:
        line += f"; {len(plan.skipped)} without a valid pixel skipped"
    return line


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class RunEstimate:
    """Says once, from the first windows of a run, how long the rest will take.

    ``start()`` when the windows start; call it as the progress callback ``(done, total)``: once
    ``after`` windows are done (and some remain) it says ``estimate: about 4 min 10 s left for 250
    windows (1.00 s per window from the first 3)`` (``label`` names the scene after ``estimate:``).
    Wall time per window, so parallel workers count.
    """

    def __init__(self, say: Callable[[str], None], after: int = 3, clock: Callable[[], float] = time.perf_counter,
                 label: str = ""):
        self.say = say
        self.label = f"{label}: " if label else ""
        self.after = after
        self.clock = clock
        self.t0: float | None = None
        self.reported = False

    def start(self) -> None:
        self.t0 = self.clock()

    def __call__(self, done: int, total: int) -> None:
        if self.reported or self.t0 is None or done < self.after or done >= total:
            return
        self.reported = True
        per = (self.clock() - self.t0) / done
        self.say(f"estimate: {self.label}about {_duration(per * (total - done))} left for {total - done} windows "
                 f"({per:.2f} s per window from the first {done})")


P = TypeVar("P", InProcessPool, RayPool)


def plan_beside_workers(plan: Callable[[], PreparedScene], start: Callable[[], P]) -> tuple[PreparedScene, P, float]:
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


def finish_scene(prepared: PreparedScene, run: PoolRun, merge_config: MergeConfig | None = None) -> SceneResult:
    """Merge the pool's window detections of ``prepared`` into scene boxes, then keep them to the
    scene's valid pixels: boxes centred outside the scene (a padded window) or on nodata are dropped,
    boxes that overhang the scene are clipped to it (``serving.engine.valid_area``)."""
    timings = dict(prepared.timings)
    t = time.perf_counter()
    if any(len(d.scores) for d in run.detections):
        from serving.merge.methods import merge  # torch: imported only when there is something to merge

        merged = merge(run.detections, merge_config if merge_config is not None else MergeConfig())
        boxes, scores, labels, levels = merged.boxes, merged.scores, merged.labels, merged.levels
    else:
        boxes = np.zeros((0, 5), np.float64)
        scores, labels, levels = np.zeros(0, np.float64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    kept = keep_on_valid_pixels(boxes, prepared.info, prepared.plan.spec, prepared.plan.coverage)
    timings["merge"] = time.perf_counter() - t
    timings["read"] = run.read_s
    timings["detect"] = run.detect_s
    timings["total"] = time.perf_counter() - prepared.t_start
    return SceneResult(
        boxes=kept.boxes,
        scores=scores[kept.keep],
        labels=labels[kept.keep],
        levels=levels[kept.keep],
        scene=prepared.info,
        timings=timings,
        windows=len(prepared.plan.plan),
        skipped=len(prepared.plan.skipped) + run.skipped,
        dropped=int((~kept.keep).sum()),
        clipped=kept.clipped,
        window_detections=run.detections,
    )


def detect_scene(
    uri: str,
    detector_spec: DetectorSpec,
    *,
    bands: Sequence[int] | None = None,
    window: int = 1024,
    overlap: int = 200,
    merge_config: MergeConfig | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    batch_size: int | None = None,
    resampling: PyramidResampling = "exact",
    progress: Progress | None = None,
    pool: InProcessPool | RayPool | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> SceneResult:
    """Detect bridges in the scene at ``uri`` (path, /vsicurl/ or http(s) URL, s3:// URL).

    ``workers``: None = what pays here (``make_pool``): one Ray actor per GPU, or this process on a
    machine without one; 0 = in this process; n = n Ray actors. ``ray_address`` joins an existing Ray
    cluster. ``pool`` reuses workers that the caller owns (a batch of scenes); it is not closed here,
    and ``workers``, ``ray_address`` and ``batch_size`` are then the pool's. ``progress(done, total)``
    is called as windows complete.
    """
    t_start = time.perf_counter()
    info = open_scene(uri)  # a missing or unreadable scene fails here, before any worker starts,
    select_bands(info, bands)  # and so do bands it does not have
    check_scene_size(info, max_pixels)  # and a scene too small or too large
    opened = time.perf_counter() - t_start

    config = PoolConfig(workers=workers, ray_address=ray_address, batch_size=batch_size)

    def plan() -> PreparedScene:
        # A pool that reads in one pass finds the empty windows itself: no coverage scan before it starts.
        one_pass = reads_in_one_pass(pool if pool is not None else (detector_spec, config), resampling)
        return prepare_scene(info, bands=bands, window=window, overlap=overlap, resampling=resampling,
                             max_pixels=max_pixels, coverage_scan=not one_pass)

    own_pool = pool is None
    if pool is None:
        prepared, pool, startup = plan_beside_workers(plan, lambda: make_pool(detector_spec, config))
    else:
        prepared, startup = plan(), 0.0
    prepared.t_start = t_start
    prepared.timings.update(open=opened, startup=startup)
    for notice in prepared.plan.warnings:  # a striped layout
        warnings.warn(notice, stacklevel=2)
    try:
        t = time.perf_counter()
        run = pool.run(prepared.plan.spec, prepared.plan.items, progress)
        prepared.timings["stream"] = time.perf_counter() - t
    finally:
        if own_pool:
            pool.close()
    if run.skipped:  # windows a one-pass read found empty (planned without a coverage scan)
        warnings.warn(empty_windows_notice(info.uri, run.skipped, len(prepared.plan.items)), stacklevel=2)
    return finish_scene(prepared, run, merge_config)
