import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning


def shared_data_root() -> Path:
    env = os.environ.get("HBDNET_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root}")
    return root


def _write_raster(path: Path, array: np.ndarray, driver: str = "GTiff", **profile) -> Path:
    """Write a (C, H, W) array without georeferencing (the warning about that is expected)."""
    c, h, w = array.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver=driver, height=h, width=w, count=c, dtype=array.dtype, **profile) as ds:
            ds.write(array)
    return path


@pytest.fixture(autouse=True)
def _quiet_georeferencing():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


@pytest.fixture(scope="session")
def write_raster():
    """``write_raster(path, (C, H, W) array, driver="GTiff", **profile) -> path``."""
    return _write_raster
