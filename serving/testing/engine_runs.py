"""The one scene path (``serving.detect.detect``) called the way tests and benchmarks describe a run:
a detector spec, a pyramid, options and workers as keywords."""

from __future__ import annotations

from collections.abc import Sequence

from serving.detect import DetectOptions, Pool, SceneResult, detect
from serving.engine.detectors import DetectorSpec
from serving.engine.pools import PoolConfig
from serving.engine.reader import PyramidResampling
from serving.engine.scene import DEFAULT_MAX_PIXELS
from serving.engine.tasks import Progress
from serving.merge.config import MergeConfig
from serving.model_ref import model_ref


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
