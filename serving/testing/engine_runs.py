"""The one scene path (``serving.detect.detect``) called the way tests and benchmarks describe a run:
a detector spec, a pyramid, options and workers as keywords."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from serving.detect import DetectOptions, Pool, PreparedScene, SceneResult, detect, open_checked, prepare, write
from serving.engine.detectors import DetectorSpec, NoopSpec
from serving.engine.pools import PoolConfig
from serving.engine.reader import PyramidResampling
from serving.engine.scene import DEFAULT_MAX_PIXELS
from serving.engine.tasks import Progress
from serving.merge.config import MergeConfig
from serving.model_ref import ModelRef, model_ref


def detect_file(
    uri: str,
    spec: DetectorSpec,
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
    pool: Pool | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    score_thr: float | None = None,
) -> SceneResult:
    """``detect(uri, ...)`` of ``spec`` over windows of ``window`` px overlapping by ``overlap``."""
    model = model_ref(spec, window=window, overlap=overlap)
    options = DetectOptions(score_thr=score_thr, bands=tuple(bands) if bands is not None else None,
                            max_pixels=max_pixels, merge_config=merge_config, resampling=resampling)
    config = PoolConfig(workers=workers, ray_address=ray_address, batch_size=batch_size)
    return detect(uri, model, options, pool=pool, pool_config=config, progress=progress)


def plan_file(uri: str, *, window: int = 1024, overlap: int = 200, bands: Sequence[int] | None = None) -> PreparedScene:
    """The scene at ``uri`` opened, checked and planned as ``detect`` plans it (with a coverage scan)."""
    options = DetectOptions(bands=tuple(bands) if bands is not None else None)
    return prepare(uri, open_checked(uri, options), model_ref(NoopSpec(), window=window, overlap=overlap), options)


@dataclass(frozen=True)
class FileOutcome:
    output: Path
    detections: int
    windows: int
    seconds: float
    notes: tuple[str, ...] = ()


def detect_to_file(uri: str, output: str | Path, model: ModelRef, options: DetectOptions = DetectOptions(), *,
                   pool: Pool | None = None, pool_config: PoolConfig = PoolConfig(), progress: Progress | None = None,
                   on_plan: Callable[[PreparedScene], None] | None = None) -> FileOutcome:
    """What ``hbdnet detect`` does with a scene: ``detect``, then ``write`` to ``output``."""
    t0 = time.perf_counter()
    output = Path(output)
    result = detect(uri, model, options, outputs=[output], pool=pool, pool_config=pool_config, progress=progress,
                    on_plan=on_plan)
    notes = write(result, [output], model)
    return FileOutcome(output, len(result.scores), result.windows, time.perf_counter() - t0, tuple(notes))
