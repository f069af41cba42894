"""The web page's quicklook: what is where in the scene is there on the map (a UTM scene far from its
central meridian, so the picture turns on its way to Web Mercator), other than 8-bit data stretched,
no-data transparent, and a 16k scene rendered without being read whole."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer

from serving.outputs.quicklook import render_quicklook, write_quicklook

UTM10 = "EPSG:32610"  # central meridian 123 W; the scene lies near 120 W, 2 degrees of grid convergence
ORIGIN = (730000.0, 4400000.0)


def write(path, data: np.ndarray, *, crs: str | None = UTM10, res: float = 1.0, nodata=None):
    count, height, width = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype=data.dtype,
                       crs=crs, transform=Affine(res, 0, ORIGIN[0], 0, -res, ORIGIN[1]), nodata=nodata,
                       tiled=True, blockxsize=256, blockysize=256) as ds:
        ds.write(data)
    return path


def lonlat_of_quicklook_pixel(bounds, col: float, row: float) -> tuple[float, float]:
    merc = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    (x0, y1), (x1, y0) = merc.transform(bounds.west, bounds.north), merc.transform(bounds.east, bounds.south)
    x, y = x0 + (col + 0.5) / bounds.width * (x1 - x0), y1 - (row + 0.5) / bounds.height * (y1 - y0)
    return merc.transform(x, y, direction="INVERSE")


def test_marks_in_the_scene_are_where_the_map_puts_them(tmp_path):
    data = np.full((3, 1500, 2000), 90, np.uint8)
    marks = {"white": ((1500, 300), (255, 255, 255)), "red": ((200, 1200), (255, 0, 0))}
    for (col, row), colour in marks.values():
        data[:, row - 15:row + 15, col - 15:col + 15] = np.asarray(colour, np.uint8)[:, None, None]
    with rasterio.open(write(tmp_path / "utm.tif", data)) as ds:
        rgba, bounds = render_quicklook(ds, [1, 2, 3], max_side=500)
        to_lonlat = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True)
        for (col, row), colour in marks.values():
            near = np.all(np.abs(rgba[:3].astype(int) - np.asarray(colour)[:, None, None]) < 40, axis=0)
            rows, cols = np.nonzero(near & (rgba[3] == 255))
            assert rows.size > 20, colour
            got = lonlat_of_quicklook_pixel(bounds, cols.mean(), rows.mean())
            want = to_lonlat.transform(*(ds.transform @ (col, row)))
            metres = np.hypot((got[0] - want[0]) * 111_320 * np.cos(np.radians(want[1])), (got[1] - want[1]) * 110_540)
            assert metres < 6.0, (colour, metres)  # a quicklook pixel is about 4 m here
    assert max(bounds.width, bounds.height) <= 500
    corners = rgba[3][[0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 0).any()  # turned by the convergence: the footprint leaves corners empty


def test_other_than_8_bit_is_stretched_and_no_data_is_transparent(tmp_path):
    data = np.tile(np.linspace(1000, 3000, 400, dtype=np.uint16), (1, 300, 1))
    data[:, :, :100] = 0
    with rasterio.open(write(tmp_path / "u16.tif", data, nodata=0)) as ds:
        rgba, _ = render_quicklook(ds, [1])
    inside = rgba[3] == 255
    assert 0.6 < inside.mean() < 0.8  # the left quarter is no data
    grey = rgba[0][inside]
    assert grey.min() <= 10 and grey.max() >= 245  # 2nd to 98th percentile over 0-255
    assert (rgba[0] == rgba[1]).all() and (rgba[1] == rgba[2]).all()  # one band as grey


def test_a_scene_without_a_crs_has_no_quicklook(tmp_path):
    with (rasterio.open(write(tmp_path / "plain.tif", np.zeros((3, 64, 64), np.uint8), crs=None)) as ds,
          pytest.raises(ValueError, match="no CRS")):
        render_quicklook(ds, [1, 2, 3])


def test_the_files_written(tmp_path):
    with rasterio.open(write(tmp_path / "s.tif", np.full((3, 200, 300), 120, np.uint8))) as ds:
        bounds = write_quicklook(ds, [1, 2, 3], tmp_path / "q.png")
    assert json.loads((tmp_path / "q.json").read_text())["width"] == bounds.width
    with rasterio.open(tmp_path / "q.png") as png:
        assert png.driver == "PNG" and png.count == 4 and (png.width, png.height) == (bounds.width, bounds.height)
    assert not list(tmp_path.glob("*.aux.xml"))


_MEMORY = """
import sys
import numpy as np, rasterio
from affine import Affine
from rasterio.windows import Window
from serving.outputs.quicklook import render_quicklook
n = 16384
with rasterio.open(sys.argv[1], "w", driver="GTiff", width=n, height=n, count=3, dtype="uint8",
                   crs="EPSG:32631", transform=Affine(0.5, 0, 500000, 0, -0.5, 5800000), tiled=True,
                   blockxsize=512, blockysize=512, compress="deflate") as ds:
    ramp = np.broadcast_to((np.arange(n) % 251).astype(np.uint8), (512, n))
    for r in range(0, n, 512):
        ds.write(np.stack([ramp, ramp[:, ::-1], np.full((512, n), r % 256, np.uint8)]), window=Window(0, r, n, 512))
def status(key):  # kB; VmHWM is this process's own peak (ru_maxrss carries the parent's over an exec)
    return int(open("/proc/self/status").read().split(key + ":")[1].split()[0])
before = status("VmRSS")
with rasterio.open(sys.argv[1]) as ds:
    rgba, bounds = render_quicklook(ds, [1, 2, 3])
print((status("VmHWM") - before) * 1024, bounds.width, bounds.height)
"""


def test_a_16k_scene_is_not_read_whole(tmp_path):
    """The scene's pixels are 805 MB; the read takes a small part of that (peak resident memory of a
    process of its own over what it held before the read: the scene is written first, and writing
    its strips peaks lower than a whole-scene read would)."""
    out = subprocess.run([sys.executable, "-c", _MEMORY, str(tmp_path / "s16k.tif")], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    grew, width, height = map(int, out.stdout.split())
    assert max(width, height) <= 1024
    assert grew < 200 * 2**20, f"{grew / 2**20:.0f} MB"
    print(f"quicklook of a 16k scene: {grew / 2**20:.0f} MB over what the process held")
