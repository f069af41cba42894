"""Fixtures for the serving tests: synthetic GeoTIFFs written with rasterio, and a Ray runtime."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, Resampling


def _write_geotiff(
    path: Path,
    data: np.ndarray,
    *,
    tiled: bool = True,
    block: int = 128,
    nodata: float | None = None,
    colorinterp: Sequence[ColorInterp] | None = None,
    mask: np.ndarray | None = None,
    overviews: Sequence[int] = (),
    compress: str | None = "deflate",
) -> Path:
    """Write ``data`` (C, H, W) as a georeferenced GeoTIFF (EPSG:32631, 0.5 m pixels).

    ``tiled=False`` writes strips of ``block // 16`` rows; ``mask`` (H, W) bool becomes an internal
    per-dataset mask band; ``colorinterp`` can make a band alpha; ``overviews`` are built with
    ``Resampling.average``.
    """
    c, h, w = data.shape
    profile = dict(driver="GTiff", width=w, height=h, count=c, dtype=data.dtype.name, crs="EPSG:32631",
                   transform=Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 5800000.0), nodata=nodata)
    if compress:
        profile["compress"] = compress
    if tiled:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    else:
        profile.update(tiled=False, blockysize=max(1, block // 16))
    if colorinterp is not None and ColorInterp.alpha in colorinterp and c == 4:
        profile["photometric"] = "RGB"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as ds:
        if colorinterp is not None:
            ds.colorinterp = list(colorinterp)
        ds.write(data)
        if mask is not None:
            ds.write_mask(np.where(mask, 255, 0).astype(np.uint8))
    if overviews:
        with rasterio.open(path, "r+") as ds:
            ds.build_overviews(list(overviews), Resampling.average)
    return path


@pytest.fixture
def geotiff(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``geotiff("name.tif", data, **options)`` writes a GeoTIFF in ``tmp_path`` (see above)."""

    def make(name: str, data: np.ndarray, **options: object) -> Path:
        return _write_geotiff(tmp_path / name, data, **options)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[None]:
    """A local Ray runtime for the tests of one module (start-up costs about 5 s).

    3 logical CPUs, so that a 2-actor pool and a 1-actor pool can be up at the same time.
    """
    ray = pytest.importorskip("ray")
    from serving.engine.pools import ensure_ray

    started = ensure_ray(num_cpus=3)
    yield
    if started:
        ray.shutdown()
