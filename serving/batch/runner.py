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
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.batch.inputs import SceneInput, short_hash
from serving.detect import (
    DetectOptions,
    PreparedScene,
    SceneRequest,
    detect_many,
    write,
)
from serving.engine.pools import InProcessPool, PoolConfig, RayPool, make_pool
from serving.engine.scene import SceneError
from serving.model_ref import ModelRef
from serving.outputs.geo_output import (
    OUTPUT_FORMATS,
    OutputError,
    OutputFormat,
    fsync_path,
)
from serving.reporting import RunEstimate, plan_summary

MANIFEST_NAME = "manifest.jsonl"
Log = Callable[[str], None]


class BatchError(Exception):
    """The batch cannot start (output folder, manifest in use); the message is one line."""


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
        fsync_path(outdir)
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
class _BatchScene:
    """A scene of the batch from its planning to its manifest line: ``handed`` is when its windows
    were handed to the pool (``time.perf_counter()``), so that its seconds do not count the time it
    waited behind the scene before."""

    key: int
    scene: SceneInput
    output: Path
    handed: float | None = None
    plan_s: float = 0.0


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

    Each scene takes the one scene path (``serving.detect.detect_many``, then ``write``); this adds
    the manifest, resuming, output names and progress. The pool is created from ``pool_config`` when
    some scene needs running (a run with nothing left to do starts no workers) and closed at the end,
    unless ``pool`` is given (then it is used and left open). With Ray, up to
    ``pool_config.open_scenes`` scenes (a given pool's own config) are in flight at once; a Ctrl-C
    loses those. A scene that fails is recorded and the run goes on; ``BatchError`` (output folder,
    manifest locked, workers that do not start) and ``KeyboardInterrupt`` propagate. ``log`` receives
    one line per failed scene and per warning.
    """
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; expected one of {OUTPUT_FORMATS}")
    outdir = Path(outdir)
    params = {"format": fmt, "score_thr": float(model.score_threshold(options.score_thr)),
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

        def record(bs: _BatchScene, outcome: tuple[int, int, list[str]] | Exception, t_end: float) -> None:
            """The scene's manifest line; ``outcome`` is (bridges, windows, notes) or its error."""
            seconds = round(bs.plan_s + (t_end - bs.handed if bs.handed is not None else 0.0), 3)
            rec: dict[str, Any] = {"scene": bs.scene.uri, "output": bs.output.name}
            if isinstance(outcome, Exception):  # a bad scene must not stop the others; the reason is recorded
                rec.update(status="failed", detections=0, windows=0, seconds=seconds, error=_error_line(outcome),
                           warnings=[])
                summary.ran_failed += 1
                say(f"failed: {bs.scene.uri}: {rec['error']}")
            else:
                bridges, windows, notes = outcome
                rec.update(status="ok", detections=bridges, windows=windows, seconds=seconds, error=None,
                           warnings=notes)
                summary.ran_ok += 1
                summary.detections += bridges
                for note in notes:
                    say(f"warning: {note}")
            rec.update(model=model_entry, params=params, source=bs.scene.source,
                       finished_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
            manifest.append(rec)
            final[bs.scene.uri] = rec
            bars.scene_done(bs.key if bs.handed is not None else None)

        def requests() -> Iterator[SceneRequest]:
            for key, scene in enumerate(todo):
                bs = _BatchScene(key, scene, outdir / names[scene.uri])
                estimate = RunEstimate(say, label=scene.name)

                def on_plan(prepared: PreparedScene, bs: _BatchScene = bs, estimate: RunEstimate = estimate) -> None:
                    bs.handed = time.perf_counter()
                    bs.plan_s = prepared.timings["open"] + prepared.timings["plan"]
                    bars.start(bs.key, bs.scene.name)
                    say(f"plan: {bs.scene.name}: {plan_summary(prepared.info, prepared.plan)}")
                    estimate.start()

                def progress(done: int, total: int, key: int = key, estimate: RunEstimate = estimate) -> None:
                    bars.windows(key, done, total)
                    estimate(done, total)

                yield SceneRequest(scene.uri, outputs=(bs.output,), progress=progress, on_plan=on_plan, key=bs)

        own_pool = pool is None
        try:
            if todo and pool is None:
                try:
                    pool = make_pool(model.spec, pool_config)
                except Exception as exc:  # Ray cannot start, the model does not build: nothing can run
                    raise BatchError(f"cannot start the workers: {_error_line(exc)}") from exc
            if todo:
                assert pool is not None
                for request, result in detect_many(requests(), model, options, pool):
                    bs: _BatchScene = request.key  # type: ignore[assignment]
                    if isinstance(result, Exception):
                        record(bs, result, time.perf_counter())
                        continue
                    try:
                        notes = write(result, [bs.output], model)
                    except Exception as exc:
                        record(bs, exc, time.perf_counter())
                    else:
                        record(bs, (len(result.scores), result.windows, notes), time.perf_counter())
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

