"""A worker's detector fed by one ``PyramidPass`` over a scene, instead of one exact read per window.

The in-process pool (``workers=0``) runs each scene this way: the scene is decoded once, and windows
reach the detector as soon as the rows they need have been decoded, in batches of one level (a
batch is flushed when it is full, and every partial batch at the end). Results are keyed by plan
index, as from the per-window path, so the merge sees the same detections in the same order.

For a GPU model, a thread takes the windows from the pass and starts their upload to the GPU
(``window_batches.device_stager``) up to a batch ahead, so the next batch is on its way while the GPU
works on the current one; a CPU model takes the pass's windows as they come.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from serving.engine.ahead import ahead
from serving.engine.detectors import WindowDetector
from serving.engine.pyramid_pass import PassConfig, PyramidPass
from serving.engine.reader import ReadItem, ReadSpec
from serving.engine.tasks import SceneState, TaskResult
from serving.engine.window_batches import detect_batch, device_stager


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
