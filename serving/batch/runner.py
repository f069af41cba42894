"""Many scenes through one worker pool: one output per scene and a resumable run manifest.

``run_batch`` runs every scene through a single pool (``make_pool``: the same Ray actors, or the same
in-process detector, for the whole batch) and writes ``OUTDIR/<name>_bridges.<format>`` per scene
and one JSON line per finished scene to ``OUTDIR/manifest.jsonl``::

    {"scene": uri, "output": file name in OUTDIR, "status": "ok" | "failed", "detections": n,
     "windows": n, "seconds": s, "error": null | one line, "warnings": [one line each],
     "model": {"name", "sha256"}, "params": {...}, "source": input, "finished_at": ISO 8601 UTC}

and, for a scene whose windows ran on Ray actors, ``"nodes": {ray node id: windows}``: where its
windows ran (each counted once, on the node whose result was kept), to see how a cluster shares them.

Resuming. A line is appended (flushed and fsynced) only after the scene's output file is complete
and renamed into place, so a crash or Ctrl-C loses at most the scenes in progress. On a re-run the
latest line of each scene decides: a scene is skipped when it ran with the same model (sha256 of
the checkpoint) and the same ``params`` (format, score threshold, bands, window, overlap: anything
that changes the output), and, for ``ok``, its output file is still there. Failed scenes are
recorded and skipped on re-runs unless ``retry_failed`` (a scene that is bad stays bad; a network
error is worth a retry, which the user asks for). A changed model or changed params run every
scene again. Skipped scenes add no line, so each run of a scene is one line.

Output names come from the scene's stem (``serving.batch.manifest.assign_outputs``).

Scenes take the one scene path, ``serving.detect.detect_many`` (each scene planned on a thread one
scene ahead while the pool runs the one before; with Ray, up to ``PoolConfig.open_scenes`` scenes in
flight at once), then ``serving.detect.write``; this module adds only the manifest, resuming, output
names and progress. Manifest lines come in completion order; everything here happens in one thread
(``detect_many`` hands back finished scenes), so the manifest and the progress bars need no locks.
A scene's ``seconds`` are its own: its open and plan, then from the moment its windows were handed
to the pool until its output was written, not the time it waited behind the scene before.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.batch.inputs import SceneInput
from serving.batch.manifest import BatchError, assign_outputs, open_manifest
from serving.detect import DetectOptions, PreparedScene, SceneRequest, detect_many, write
from serving.engine.pools import InProcessPool, PoolConfig, RayPool, make_pool
from serving.engine.scene import SceneError
from serving.model_ref import ModelRef
from serving.outputs.formats import OUTPUT_FORMATS, OutputError, OutputFormat
from serving.reporting import RunEstimate, plan_summary

Log = Callable[[str], None]


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
    # what else shapes a scene's bridges, when given (a run without them keeps its earlier manifests)
    params.update({k: v for k, v in (("aoi", options.aoi.label if options.aoi else None), ("gsd", options.gsd),
                                     ("resolution", options.resolution)) if v is not None})
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

        def record(bs: _BatchScene, outcome: tuple[int, int, list[str], dict[str, int]] | Exception,
                   t_end: float) -> None:
            """The scene's manifest line; ``outcome`` is (bridges, windows, notes, windows by Ray node) or its
            error."""
            seconds = round(bs.plan_s + (t_end - bs.handed if bs.handed is not None else 0.0), 3)
            rec: dict[str, Any] = {"scene": bs.scene.uri, "output": bs.output.name}
            if isinstance(outcome, Exception):  # a bad scene must not stop the others; the reason is recorded
                rec.update(status="failed", detections=0, windows=0, seconds=seconds, error=_error_line(outcome),
                           warnings=[])
                summary.ran_failed += 1
                say(f"failed: {bs.scene.uri}: {rec['error']}")
            else:
                bridges, windows, notes, nodes = outcome
                rec.update(status="ok", detections=bridges, windows=windows, seconds=seconds, error=None,
                           warnings=notes)
                if nodes:
                    rec["nodes"] = nodes
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
                    say(f"plan: {bs.scene.name}: {plan_summary(prepared.grid, prepared.plan, prepared.resolution)}")
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
                        record(bs, (len(result.scores), result.windows, notes, result.nodes), time.perf_counter())
        finally:
            bars.close()
            if own_pool and pool is not None:
                pool.close()
    summary.records = [final[s.uri] for s in scenes if s.uri in final]
    return summary


def _error_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, (SceneError, OutputError)):
        return first or type(exc).__name__
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


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
