"""Many scenes through one worker pool: one output per scene and a resumable run manifest.

``run_batch`` runs every scene through a single pool (``make_pool``: the same Ray actors, or the same
in-process detector, for the whole batch) and writes ``OUTDIR/<name>_bridges.<format>`` per scene
and one JSON line per finished scene to ``OUTDIR/manifest.jsonl``::

    {"scene": uri, "output": file name in OUTDIR, "status": "ok" | "failed", "detections": n,
     "windows": n, "seconds": s, "error": null | one line, "warnings": [one line each],
     "model": {"name", "sha256"}, "params": {...}, "source": input, "finished_at": ISO 8601 UTC}

Resuming. A line is appended (flushed and fsynced) only after the scene's output file is complete
and renamed into place, so a crash or Ctrl-C loses at most the scenes in progress. On a re-run the
latest line of each scene decides: a scene is skipped when it ran with the same model (sha256 of
the checkpoint) and the same ``params`` (format, score threshold, bands, window, overlap: anything
that changes the output), and, for ``ok``, its output file is still there. Failed scenes are
recorded and skipped on re-runs unless ``retry_failed`` (a scene that is bad stays bad; a network
error is worth a retry, which the user asks for). A changed model or changed params run every
scene again. Skipped scenes add no line, so each run of a scene is one line.

Output names come from the scene's stem. A name already used in the manifest stays with its scene;
a stem that two scenes share (case-insensitive), or that an earlier scene in the manifest holds, gets
the first 8 hex digits of the SHA-1 of the scene URI appended, so names never depend on order.

Scenes go through the shared pool's ``run_many``: with Ray, up to ``PoolConfig.open_scenes`` scenes
are in flight at once. Each scene is planned (open, stretch and coverage scans) on a planning thread
while the pool runs the scene before it, one scene ahead, so the workers do not wait for the scans
of uint16 or masked scenes; the actors run the next scene's tasks while this process merges and
writes the scene before; manifest lines therefore come in completion order. Planning returns what
it has to warn of (``ScenePlan.warnings``) instead of warning, so nothing of it crosses threads;
everything else happens in this one thread: ``run_many`` draws the next scene from a generator here
and hands back finished ones, so the manifest, the progress bars and the warnings of each scene
need no locks. Results are keyed by plan index per scene, so outputs do not depend on the
interleaving or on the number of workers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from serving.engine.detectors import DetectorSpec
from serving.engine.pipeline import (PreparedScene, RunEstimate, finish_scene, plan_beside_workers, plan_summary,
                                     prepare_scene)
from serving.outputs.geo_output import OutputError, check_output_path, write_detections
from serving.batch.inputs import SceneInput, short_hash
from serving.merge.config import MergeConfig
from serving.engine.reader import PyramidResampling, empty_windows_notice, select_bands
from serving.engine.scene import (DEFAULT_MAX_PIXELS, SceneError, SceneInfo, check_scene_size, open_scene,
                                  scene_reference)
from serving.engine.workers import (InProcessPool, PoolConfig, PoolRun, Progress, RayPool, SceneJob, make_pool,
                                    reads_in_one_pass)

MANIFEST_NAME = "manifest.jsonl"
OutputFormat = Literal["gpkg", "geojson", "fgb"]
OUTPUT_FORMATS: tuple[str, ...] = ("gpkg", "geojson", "fgb")
Log = Callable[[str], None]
T = TypeVar("T")


class BatchError(Exception):
    """The batch cannot start (output folder, manifest in use); the message is one line."""


@dataclass(frozen=True)
class ModelRef:
    """The detector to run and how outputs and the manifest name it.

    ``sha256`` identifies the weights (of the checkpoint file for ``kind="model"``); ``window`` and
    ``overlap`` are the pyramid the model was built for; ``class_names`` index its labels;
    ``score_thr`` is the operating point stored with the model (None: none was chosen).
    """

    name: str
    sha256: str
    spec: DetectorSpec
    class_names: tuple[str, ...] = ("bridge",)
    window: int = 1024
    overlap: int = 200
    score_thr: float | None = None

    def score_threshold(self, given: float | None) -> float:
        """The threshold a run uses: ``given``, else the model's stored operating point, else 0."""
        if given is not None:
            return given
        return self.score_thr if self.score_thr is not None else 0.0

    @property
    def label(self) -> str:
        """What the ``model`` attribute of every output feature says."""
        return f"{self.name}@{self.sha256[:12]}"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_ref(spec: DetectorSpec, name: str | None = None) -> ModelRef:
    """Describe ``spec``: for a checkpoint, its hash, classes and pyramid; for test doubles, their inputs.

    Raises ``hbdnet.checkpoint.CheckpointError`` for a file that is not an hbdnet checkpoint (checked
    here, in this process, so that a bad file is one clear error before any worker starts).
    """
    if spec.kind == "model":
        if spec.path is None:
            raise ValueError("DetectorSpec(kind='model') needs a checkpoint path")
        from hbdnet.checkpoint import read_checkpoint

        ckpt = read_checkpoint(spec.path)
        config = ckpt.get("config") or {}
        meta = ckpt.get("meta") or {}
        num_classes = int((config.get("local") or {}).get("num_classes", 1))
        classes = meta.get("classes")
        if not (isinstance(classes, (list, tuple)) and len(classes) == num_classes):
            classes = ["bridge"] if num_classes == 1 else [f"class_{i}" for i in range(num_classes)]
        return ModelRef(
            name=name or Path(spec.path).stem,
            sha256=file_sha256(spec.path),
            spec=spec,
            class_names=tuple(str(c) for c in classes),
            window=int(config.get("window", 1024)),
            overlap=int(config.get("overlap", 200)),
            score_thr=float(meta["score_thr"]) if meta.get("score_thr") is not None else None,
        )
    if spec.kind == "perfect":
        truth = np.ascontiguousarray(np.asarray(spec.ground_truth, dtype=np.float64))
        return ModelRef(name or "perfect", hashlib.sha256(truth.tobytes()).hexdigest(), spec)
    return ModelRef(name or spec.kind, hashlib.sha256(spec.kind.encode()).hexdigest(), spec)


@dataclass(frozen=True)
class DetectOptions:
    """What, besides the model, shapes a scene's output. ``score_thr`` filters merged boxes;
    ``max_pixels`` refuses larger scenes (``check_scene_size``)."""

    score_thr: float = 0.0
    bands: tuple[int, ...] | None = None
    merge_config: MergeConfig | None = None
    resampling: PyramidResampling = "exact"
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class SceneOutcome:
    output: Path
    detections: int
    windows: int
    seconds: float
    notes: tuple[str, ...] = ()  # warnings about the scene: no CRS, a slow layout


def detect_to_file(
    uri: str,
    output: str | Path,
    model: ModelRef,
    options: DetectOptions = DetectOptions(),
    *,
    pool: InProcessPool | RayPool | None = None,
    pool_config: PoolConfig = PoolConfig(),
    progress: Progress | None = None,
    on_plan: Callable[[PreparedScene], None] | None = None,
) -> SceneOutcome:
    """Detect bridges in one scene and write them to ``output`` (format from its extension).

    ``pool`` runs the windows (it stays open); without one, ``pool_config`` describes the workers
    started for this scene alone. ``on_plan(prepared)`` is called once the scene is planned and the
    workers are up, just before the windows run (the CLI prints the plan there). Raises
    ``SceneError`` (unreadable scene, bad bands) and ``OutputError`` (output cannot be written,
    GeoJSON of a scene without CRS) with one-line messages.
    """
    t0 = time.perf_counter()
    output = Path(output)
    info = open_checked(uri, output, options)  # a bad scene or output fails before workers start

    def plan() -> PreparedScene:
        # A pool that reads in one pass finds the empty windows itself: no coverage scan before it starts.
        one_pass = reads_in_one_pass(pool if pool is not None else (model.spec, pool_config), options.resampling)
        return prepare_scene(info, bands=options.bands, window=model.window, overlap=model.overlap,
                             resampling=options.resampling, max_pixels=options.max_pixels,
                             coverage_scan=not one_pass)

    own_pool = pool is None
    if pool is None:
        prepared, pool, _ = plan_beside_workers(plan, lambda: make_pool(model.spec, pool_config))
    else:
        prepared = plan()
    notes = plan_notes(prepared)
    try:
        if on_plan is not None:
            on_plan(prepared)
        run = pool.run(prepared.plan.spec, prepared.plan.items, progress)
    finally:
        if own_pool:
            pool.close()
    if run.skipped:  # windows a one-pass read found empty (planned without a coverage scan)
        notes.append(str(empty_windows_notice(uri, run.skipped, len(prepared.plan.items))))
    outcome = _noting(notes, lambda: write_output(prepared, run, output, model, options, t0, uri))
    return replace(outcome, notes=tuple(notes))


def open_for_output(uri: str, output: Path, model: ModelRef, options: DetectOptions) -> PreparedScene:
    """``open_checked``, then plan the scene (no worker involved; it may run on any thread: what to
    warn of is in ``prepared.plan.warnings``, see ``plan_notes``)."""
    info = open_checked(uri, output, options)
    return prepare_scene(info, bands=options.bands, window=model.window, overlap=model.overlap,
                         resampling=options.resampling, max_pixels=options.max_pixels)


def open_checked(uri: str, output: Path, options: DetectOptions) -> SceneInfo:
    """Open the scene after checking that ``output`` can be written, and that the scene has the bands
    asked for, a size within bounds and, for GeoJSON, a CRS: the cheap checks, made before any scan or
    worker."""
    check_output_path(output)
    info = open_scene(uri)
    select_bands(info, options.bands)
    check_scene_size(info, options.max_pixels)
    if output.suffix.lower() == ".geojson" and info.crs is None:
        raise OutputError(f"cannot write {output}: scene {uri} has no CRS and GeoJSON must be WGS84 "
                          "longitude/latitude; write .gpkg or .fgb to get pixel coordinates")
    return info


def write_output(prepared: PreparedScene, run: PoolRun, output: Path, model: ModelRef, options: DetectOptions,
                 t0: float, scene: str | None = None) -> SceneOutcome:
    """Merge the scene's window detections and write them to ``output``, synced to disk (no notes).

    ``t0``: ``time.perf_counter()`` when the scene's work began. ``scene``: the URI the scene was
    asked for (default: the path GDAL opened); the ``scene`` attribute holds it, a local path
    made absolute (``scene_reference``)."""
    result = finish_scene(prepared, run, options.merge_config)
    keep = result.scores >= options.score_thr
    write_detections(
        output, result.boxes[keep], result.scores[keep], result.labels[keep], result.levels[keep],
        transform=result.scene.transform, crs=result.scene.crs,
        scene=scene_reference(scene if scene is not None else prepared.info.uri), model=model.label,
        class_names=model.class_names)
    _fsync_path(output)
    _fsync_path(output.parent)  # the rename into place
    return SceneOutcome(output, int(keep.sum()), result.windows, time.perf_counter() - t0)


def plan_notes(prepared: PreparedScene) -> list[str]:
    """The one-line notes of what planning the scene found to warn of (a striped layout)."""
    return [str(w).strip().splitlines()[0] for w in prepared.plan.warnings]


def _noting(notes: list[str], step: Callable[[], T]) -> T:
    """Run ``step``, adding the serving warnings it raises to ``notes`` (see ``_scene_notes``).

    Each step of a scene is wrapped on its own: in a batch, steps of two scenes alternate, so one
    ``catch_warnings`` around a whole scene would catch the other scene's warnings too."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            return step()
    finally:
        notes.extend(n for n in _scene_notes(caught) if n not in notes)


def _scene_notes(caught: list[warnings.WarningMessage]) -> tuple[str, ...]:
    """The serving warnings about this scene (no CRS, striped layout) as one-line notes, in order and
    without repeats; any other warning is passed on as it came."""
    notes: list[str] = []
    for w in caught:
        if issubclass(w.category, UserWarning) and w.category.__module__.startswith("serving."):
            line = str(w.message).strip().splitlines()[0]
            if line not in notes:
                notes.append(line)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return tuple(notes)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Manifest:
    """``OUTDIR/manifest.jsonl``, opened for appending and locked against a second run on the folder."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "a+b")
        try:
            self._lock()
            self._repair_tail()
        except BaseException:
            self._file.close()
            raise

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, the user keeps runs apart
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise BatchError(f"another hbdnet batch is running on {self.path.parent} "
                             f"({self.path.name} is locked)") from exc

    def _repair_tail(self) -> None:
        """End a line cut short by a crash, so that the next record starts on a line of its own."""
        self._file.seek(0, os.SEEK_END)
        if self._file.tell() == 0:
            return
        self._file.seek(-1, os.SEEK_END)
        if self._file.read(1) != b"\n":
            self._file.write(b"\n")
            self._sync()

    def records(self) -> list[dict[str, Any]]:
        """Every complete record in file order; a line cut short by a crash is skipped."""
        self._file.seek(0)
        out = []
        for line in self._file.read().splitlines():
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(rec, dict) and isinstance(rec.get("scene"), str):
                out.append(rec)
        return out

    def latest(self) -> dict[str, dict[str, Any]]:
        """The last record of each scene."""
        return {rec["scene"]: rec for rec in self.records()}

    def append(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
        self._sync()

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_manifest(outdir: Path) -> Manifest:
    """Create ``outdir`` if needed and open its manifest; ``BatchError`` if that is not possible."""
    if outdir.exists() and not outdir.is_dir():
        raise BatchError(f"output folder {outdir} is a file")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        existed = (outdir / MANIFEST_NAME).exists()
        manifest = Manifest(outdir / MANIFEST_NAME)
    except OSError as exc:
        raise BatchError(f"cannot write to output folder {outdir}: {exc.strerror or exc}") from exc
    if not os.access(outdir, os.W_OK | os.X_OK):
        manifest.close()
        raise BatchError(f"output folder {outdir} is not writable")
    if not existed:
        _fsync_path(outdir)
    return manifest


def assign_outputs(scenes: Sequence[SceneInput], previous: dict[str, dict[str, Any]],
                   fmt: str) -> dict[str, str]:
    """Output file name (in OUTDIR) for each scene URI; see the module docstring for the rule."""
    names: dict[str, str] = {}
    claimed: dict[str, str] = {}  # lower-cased base -> scene holding it, from the manifest
    for uri, rec in previous.items():
        out = rec.get("output")
        if isinstance(out, str) and out:
            claimed.setdefault(_base(out).lower(), uri)
    fresh = []
    for scene in scenes:
        rec = previous.get(scene.uri)
        out = rec.get("output") if rec else None
        if isinstance(out, str) and out and claimed.get(_base(out).lower()) == scene.uri:
            names[scene.uri] = f"{_base(out)}.{fmt}"
        else:
            fresh.append(scene)
    counts: dict[str, int] = {}
    for scene in fresh:
        key = f"{scene.name}_bridges".lower()
        counts[key] = counts.get(key, 0) + 1
    for scene in fresh:
        base = f"{scene.name}_bridges"
        if counts[base.lower()] > 1 or base.lower() in claimed:
            base = f"{scene.name}-{short_hash(scene.uri)}_bridges"
        names[scene.uri] = f"{base}.{fmt}"
    return names


def _base(file_name: str) -> str:
    return file_name.rsplit(".", 1)[0] if "." in file_name else file_name


@dataclass
class BatchSummary:
    """What a run did. ``records`` are the final manifest state of this run's scenes, in input order."""

    ran_ok: int = 0
    ran_failed: int = 0
    skipped_ok: int = 0
    skipped_failed: int = 0  # failed in an earlier run and not retried
    detections: int = 0  # in the scenes run now
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return self.ran_failed + self.skipped_failed

    @property
    def ok(self) -> int:
        return self.ran_ok + self.skipped_ok


class SceneBars:
    """Progress of a batch: a bar over scenes and one over the windows of the oldest scene in flight
    (the next one whose output is written); the progress of the scenes opened after it is kept and
    shown when their turn comes."""

    def __init__(self, total: int, enabled: bool):
        from tqdm import tqdm

        self._scenes = tqdm(total=total, unit="scene", desc="scenes", position=0, disable=not enabled,
                            dynamic_ncols=True)
        self._windows = tqdm(total=0, unit="window", position=1, leave=False, disable=not enabled,
                             dynamic_ncols=True)
        self._open: dict[int, list] = {}  # scene key -> [name, windows done, windows total], oldest first

    def start(self, key: int, name: str) -> None:
        self._open[key] = [name, 0, 0]
        if len(self._open) == 1:
            self._show()

    def windows(self, key: int, done: int, total: int) -> None:
        state = self._open.get(key)
        if state is None:
            return
        state[1:] = [done, total]
        if key == next(iter(self._open)):
            if self._windows.total != total:
                self._windows.total = total
            self._windows.update(done - self._windows.n)

    def scene_done(self, key: int | None = None) -> None:
        """A scene is recorded; ``key`` None for one that failed before it started."""
        self._scenes.update(1)
        if key is not None and self._open.pop(key, None) is not None and self._open:
            self._show()

    def _show(self) -> None:
        name, done, total = next(iter(self._open.values()))
        self._windows.reset(total=total)
        self._windows.set_description_str(name[-40:])
        self._windows.update(done)

    def close(self) -> None:
        self._windows.close()
        self._scenes.close()


@dataclass
class _OpenScene:
    """A scene of the batch between its planning and its manifest line."""

    key: int
    scene: SceneInput
    output: Path
    t0: float
    prepared: PreparedScene
    notes: list[str]


def run_batch(
    scenes: Sequence[SceneInput],
    outdir: str | Path,
    model: ModelRef,
    *,
    fmt: OutputFormat = "gpkg",
    options: DetectOptions = DetectOptions(),
    pool_config: PoolConfig = PoolConfig(),
    retry_failed: bool = False,
    pool: InProcessPool | RayPool | None = None,
    show_progress: bool = False,
    log: Log | None = None,
) -> BatchSummary:
    """Run ``scenes`` into ``outdir`` (see the module docstring); return what happened.

    The pool is created from ``pool_config`` when some scene needs running (a run with nothing
    left to do starts no workers) and closed at the end, unless ``pool`` is given (then it is used
    and left open). With Ray, up to ``pool_config.open_scenes`` scenes (a given pool's own config)
    are in flight at once; a Ctrl-C loses those. A scene that fails is recorded and the run goes
    on; ``BatchError`` (output folder, manifest locked, workers that do not start) and
    ``KeyboardInterrupt`` propagate. ``log`` receives one line per failed scene and per warning.
    """
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; expected one of {OUTPUT_FORMATS}")
    outdir = Path(outdir)
    params = {"format": fmt, "score_thr": float(options.score_thr),
              "bands": list(options.bands) if options.bands is not None else None,
              "window": model.window, "overlap": model.overlap}
    model_entry = {"name": model.name, "sha256": model.sha256}
    summary = BatchSummary()
    final: dict[str, dict[str, Any]] = {}

    with open_manifest(outdir) as manifest:
        previous = manifest.latest()
        names = assign_outputs(scenes, previous, fmt)
        todo: list[SceneInput] = []
        for scene in scenes:
            rec = previous.get(scene.uri)
            done = _settled(rec, model, params, outdir, retry_failed) if rec is not None else None
            if rec is None or done is None:
                todo.append(scene)
                continue
            final[scene.uri] = rec
            if done == "ok":
                summary.skipped_ok += 1
            else:
                summary.skipped_failed += 1

        bars = SceneBars(len(todo), show_progress)
        say = log if log is not None else (lambda line: None)

        def finish(scene: SceneInput, output: Path, t0: float, outcome: SceneOutcome | Exception,
                   key: int | None) -> None:
            record: dict[str, Any] = {"scene": scene.uri, "output": output.name}
            if isinstance(outcome, Exception):  # a bad scene must not stop the others; the reason is recorded
                record.update(status="failed", detections=0, windows=0,
                              seconds=round(time.perf_counter() - t0, 3), error=_error_line(outcome), warnings=[])
                summary.ran_failed += 1
                say(f"failed: {scene.uri}: {record['error']}")
            else:
                record.update(status="ok", detections=outcome.detections, windows=outcome.windows,
                              seconds=round(outcome.seconds, 3), error=None, warnings=list(outcome.notes))
                summary.ran_ok += 1
                summary.detections += outcome.detections
                for note in outcome.notes:
                    say(f"warning: {note}")
            record.update(model=model_entry, params=params, source=scene.source,
                          finished_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
            manifest.append(record)
            final[scene.uri] = record
            bars.scene_done(key)

        def jobs() -> Iterator[SceneJob]:
            """The scenes, each planned on a thread while the pool runs the one before (one scene
            ahead); one that cannot be planned is recorded as failed here and never reaches the pool."""
            planner = ThreadPoolExecutor(1, thread_name_prefix="hbdnet-plan")
            ahead: deque[tuple[int, SceneInput, Path, float, Future[PreparedScene]]] = deque()
            pending = iter(enumerate(todo))

            def plan_next() -> None:
                nxt = next(pending, None)
                if nxt is not None:
                    key, scene = nxt
                    output = outdir / names[scene.uri]
                    future = planner.submit(open_for_output, scene.uri, output, model, options)
                    ahead.append((key, scene, output, time.perf_counter(), future))

            try:
                plan_next()
                while ahead:
                    key, scene, output, t0, future = ahead.popleft()
                    plan_next()
                    try:
                        prepared = future.result()
                    except Exception as exc:
                        finish(scene, output, t0, exc, None)
                        continue
                    bars.start(key, scene.name)
                    say(f"plan: {scene.name}: {plan_summary(prepared)}")
                    estimate = RunEstimate(say, label=scene.name)
                    estimate.start()

                    def progress(done: int, total: int, key: int = key, estimate: RunEstimate = estimate) -> None:
                        bars.windows(key, done, total)
                        estimate(done, total)

                    yield SceneJob(prepared.plan.spec, prepared.plan.items, progress=progress,
                                   key=_OpenScene(key, scene, output, t0, prepared, plan_notes(prepared)))
            finally:  # an interrupted run does not wait for a plan nobody will use
                planner.shutdown(wait=False, cancel_futures=True)

        own_pool = pool is None
        try:
            if todo and pool is None:
                try:
                    pool = make_pool(model.spec, pool_config)
                except Exception as exc:  # Ray cannot start, the model does not build: nothing can run
                    raise BatchError(f"cannot start the workers: {_error_line(exc)}") from exc
            if todo:
                assert pool is not None
                for job, result in pool.run_many(jobs()):
                    op: _OpenScene = job.key  # type: ignore[assignment]
                    if isinstance(result, Exception):  # a worker could not read or detect this scene
                        finish(op.scene, op.output, op.t0, result, op.key)
                        continue
                    try:
                        outcome = _noting(op.notes, lambda: write_output(op.prepared, result, op.output, model,
                                                                          options, op.t0, op.scene.uri))
                    except Exception as exc:
                        finish(op.scene, op.output, op.t0, exc, op.key)
                    else:
                        finish(op.scene, op.output, op.t0, replace(outcome, notes=tuple(op.notes)), op.key)
        finally:
            bars.close()
            if own_pool and pool is not None:
                pool.close()
    summary.records = [final[s.uri] for s in scenes if s.uri in final]
    return summary


def _settled(rec: dict[str, Any], model: ModelRef, params: dict[str, Any], outdir: Path,
             retry_failed: bool) -> str | None:
    """``"ok"`` or ``"failed"`` when the scene's last record stands for this run, None to run it."""
    model_entry = rec.get("model")
    if not (isinstance(model_entry, dict) and model_entry.get("sha256") == model.sha256
            and rec.get("params") == params):
        return None
    if rec.get("status") == "ok" and (outdir / str(rec.get("output"))).is_file():
        return "ok"
    if rec.get("status") == "failed" and not retry_failed:
        return "failed"
    return None


def _error_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, (SceneError, OutputError)):
        return first or type(exc).__name__
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__

