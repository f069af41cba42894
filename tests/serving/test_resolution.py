"""The pyramid planned in ground units (issue 21, part 1): a scene's ground sample distance read from
its CRS (projected and geographic) or given, the scene resampled into the model's range (down for a
fine scene, up for a coarse one), levels outside it not run, and the boxes back on the scene's own
pixel grid. Through the CLI, with a detector that reads the pixels (``BrightBarSpec``), so that a
read through the resampled grid in the wrong place, or boxes left on the working grid, fail."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine

from serving.cli.main import main
from serving.engine.detectors import NoopSpec
from serving.engine.scene import SceneError
from serving.model_ref import ModelGsd, model_ref, resolve_model
from serving.resolution import plan_grid

RANGE = ModelGsd(min=0.25, best=0.5, max=8.0)
# A bright bar on a dark field, in scene pixels: x0, y0, x1, y1.
BAR = (1200, 700, 2100, 760)


class BrightBarDetector:
    """Finds the bright pixels of a window: one axis-aligned box around them, score 0.9."""

    name = "bright-bar"

    def detect(self, images, windows):
        out = []
        for image in images:
            rows, cols = np.nonzero(image[0] > 128)
            if len(rows) < 20:
                out.append((np.zeros((0, 5)), np.zeros(0), np.zeros(0, np.int64)))
                continue
            x0, x1, y0, y1 = cols.min(), cols.max() + 1, rows.min(), rows.max() + 1
            box = np.array([[(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, 0.0]])
            out.append((box, np.array([0.9]), np.zeros(1, np.int64)))
        return out


@dataclass(frozen=True)
class BrightBarSpec:
    name: str = "bright-bar"
    uses_gpu: bool = False

    def build(self) -> BrightBarDetector:
        return BrightBarDetector()

    def fingerprint(self) -> str:
        return hashlib.sha256(b"bright-bar").hexdigest()


def write_scene(path, gsd: float | None, *, geographic: bool = False, size=(3000, 2000)):
    """A ``size`` (width, height) uint8 RGB scene with ``BAR`` bright, at ``gsd`` metres a pixel in
    UTM 31N, or in degrees at 45 N (``geographic``), or without a CRS (``gsd`` None)."""
    w, h = size
    data = np.full((3, h, w), 40, np.uint8)
    data[:, BAR[1]:BAR[3], BAR[0]:BAR[2]] = 230
    if gsd is None:
        crs, transform = None, Affine.identity()
    elif geographic:  # degrees that make ``gsd`` metres at 45 N on WGS84
        lat = math.radians(45.0)
        a, e2 = 6378137.0, 0.00669437999014
        m = a * (1 - e2) / (1 - e2 * math.sin(lat) ** 2) ** 1.5  # metres a radian of latitude
        n = a / math.sqrt(1 - e2 * math.sin(lat) ** 2)  # of longitude, over cos(lat)
        dy, dx = math.degrees(gsd / m), math.degrees(gsd / (n * math.cos(lat)))
        crs, transform = "EPSG:4326", Affine(dx, 0, 3.0, 0, -dy, 45.0 + dy * h / 2)
    else:
        crs, transform = "EPSG:32631", Affine(gsd, 0, 500000.0, 0, -gsd, 5000000.0)
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8", crs=crs,
                       transform=transform, tiled=True, blockxsize=256, blockysize=256) as ds:
        ds.write(data)
    return path


@pytest.fixture
def bar_model(monkeypatch):
    """``hbdnet detect`` and ``batch`` run ``BrightBarSpec`` as a model made for ``RANGE``."""
    from serving.cli import batch as batch_cli
    from serving.cli import detect as detect_cli

    ref = dataclasses.replace(model_ref(BrightBarSpec(), window=512, overlap=100), gsd=RANGE)
    monkeypatch.setattr(detect_cli, "resolve_model", lambda *args, **kwargs: ref)
    monkeypatch.setattr(batch_cli, "resolve_model", lambda *args, **kwargs: ref)
    return ref


def read_boxes(path):
    _, _, geoms, fields = pyogrio.raw.read(path, layer=path.stem, columns=["cx_px", "cy_px", "level"])
    return shapely.from_wkb(geoms), dict(zip(["cx_px", "cy_px", "level"], fields))


def plan_line(err: str) -> str:
    return next(line for line in err.splitlines() if ": plan: " in line)


@pytest.mark.parametrize("geographic", [False, True], ids=["utm", "degrees"])
def test_a_fine_scene_runs_at_the_models_finest_and_its_boxes_stay_on_its_grid(tmp_path, capsys, bar_model,
                                                                                 geographic):
    scene = write_scene(tmp_path / "fine.tif", 0.15, geographic=geographic)
    out = tmp_path / "fine.gpkg"
    assert main(["detect", str(scene), "-o", str(out), "--workers", "0", "-q"]) == 0
    line = plan_line(capsys.readouterr().err)
    # 0.15 m is finer than the model's 0.25: resampled down to it (0.6x, 3000 -> 1800 px); no window at 0.15 m
    # (1799 x 1199 in degrees: the geodesic GSD is a hair under 0.15 m there)
    assert re.search(r"ground sample distance 0.15 m, resampled down to 0.25 m \(0.6x\); 1[78]\d\d x 1[12]\d\d px", line), line
    assert "level 0 (0.25 m)" in line and "0.15 m)" not in line.split(";")[1]
    geoms, fields = read_boxes(out)
    assert len(geoms) == 1
    # the box in the scene's pixels (outputs' cx_px, cy_px) and on the map: the bar's, within a working pixel
    cx, cy = (BAR[0] + BAR[2]) / 2, (BAR[1] + BAR[3]) / 2
    assert fields["cx_px"][0] == pytest.approx(cx, abs=1 / 0.6) and fields["cy_px"][0] == pytest.approx(cy, abs=1 / 0.6)
    with rasterio.open(scene) as ds:
        want = shapely.box(*(ds.transform @ (BAR[0], BAR[3])), *(ds.transform @ (BAR[2], BAR[1])))
    assert shapely.area(shapely.intersection(geoms[0], want)) / shapely.area(shapely.union(geoms[0], want)) > 0.9


def test_a_coarse_scene_is_upsampled_at_most_twice_and_levels_past_the_model_are_not_run(tmp_path, capsys,
                                                                                           bar_model):
    scene = write_scene(tmp_path / "coarse.tif", 2.0, size=(2400, 1600))
    out = tmp_path / "coarse.gpkg"
    assert main(["detect", str(scene), "-o", str(out), "--workers", "0", "-q"]) == 0
    line = plan_line(capsys.readouterr().err)
    # 2 m wants 4x to reach 0.5 m; the model's limit is 2x: 1 m. Levels 1, 2, 4, 8 m run; 16 m would not.
    assert "ground sample distance 2 m, resampled up to 1 m (2x); levels outside the model's range not run: " \
           "4 (16 m); 4800 x 3200 px" in line, line
    assert "level 3 (8 m) 2" in line and "level 4" not in line.split("; ")[-1]  # none of its windows planned
    _, fields = read_boxes(out)
    assert fields["cx_px"][0] == pytest.approx((BAR[0] + BAR[2]) / 2, abs=1.0)
    assert fields["cy_px"][0] == pytest.approx((BAR[1] + BAR[3]) / 2, abs=1.0)


def test_gsd_given_for_a_scene_without_a_crs_and_native_resolution(tmp_path, capsys, bar_model):
    scene = write_scene(tmp_path / "plain.tif", None)
    out = tmp_path / "plain.gpkg"
    assert main(["detect", str(scene), "-o", str(out), "--workers", "0", "-q", "--gsd", "0.1"]) == 0
    assert "ground sample distance 0.1 m (given), resampled down to 0.25 m (0.4x)" in plan_line(capsys.readouterr().err)
    _, fields = read_boxes(out)  # pixel coordinates of the scene itself, not of the 0.25 m grid
    assert fields["cx_px"][0] == pytest.approx((BAR[0] + BAR[2]) / 2, abs=2.5)
    # native: the scene's own pixels, less the levels finer than the model's 0.25 m (0.1 and 0.2 m)
    assert main(["detect", str(scene), "-o", str(tmp_path / "n.gpkg"), "--workers", "0", "-q", "--gsd", "0.1",
                 "--resolution", "native"]) == 0
    line = plan_line(capsys.readouterr().err)
    assert "levels outside the model's range not run: 0 (0.1 m), 1 (0.2 m)" in line and "resampled" not in line, line
    # a resolution asked of a scene whose GSD is unknown: one line, exit 1
    assert main(["detect", str(scene), "-o", str(tmp_path / "x.gpkg"), "--workers", "0", "-q",
                 "--resolution", "0.5"]) == 1
    assert "has no ground sample distance" in capsys.readouterr().err


def test_plan_shows_the_ground_units_of_a_fine_scene_in_both_crss(tmp_path, capsys):
    for geographic in (False, True):
        scene = write_scene(tmp_path / f"s{geographic}.tif", 0.15, geographic=geographic)
        assert main(["plan", str(scene)]) == 0
        out = capsys.readouterr().out
        assert "ground sample distance: 0.15 m a pixel at the scene's centre" in out, out
        assert re.search(r"resampled down to 0.25 m a pixel: 1[78]\d\d x 1[12]\d\d px \(0.6x\)", out), out
        assert re.search(r"level 0: 1/1 -> 1[78]\d\d x 1[12]\d\d px, 0.25 m, 4 windows", out), out
        assert "total windows: 5" in out


def test_the_shipped_model_records_its_ground_sample_distances():
    assert resolve_model(None).gsd == RANGE


@pytest.mark.parametrize("gsd, factor, levels", [
    (0.15, 0.6, None),  # finer than min: down to 0.25 m
    (0.3, None, None),  # within min..best: as it is
    (0.52, None, None),  # within 10 % of best: as it is
    (1.0, 2.0, None),  # coarser than best: up to it
    (3.0, 2.0, (0, 1, 2)),  # at most 2x: 1.5 m, levels 1.5, 3, 6 m run (12 m not)
])
def test_plan_grid_policy(gsd, factor, levels):
    res = plan_grid(4000, 4000, gsd, RANGE, window=1024)
    assert (res.regrid.factor if res.regrid else None) == (pytest.approx(factor) if factor else None)
    assert res.levels == levels


def test_plan_grid_refuses_what_no_level_can_run():
    with pytest.raises(SceneError, match="no pyramid level"):
        plan_grid(2000, 2000, 40.0, RANGE)
    assert plan_grid(2000, 2000, 40.0, None).regrid is None  # a model without a range runs everything
    assert plan_grid(2000, 2000, None, RANGE).regrid is None  # so does a scene without a GSD
    assert model_ref(NoopSpec()).gsd is None


@pytest.mark.parametrize("mask", ["nodata", "alpha"])
def test_a_resampled_scene_keeps_its_invalid_pixels_out(tmp_path, mask):
    """The west third of a 0.15 m scene is invalid (a nodata value, or an alpha band): read through the
    resampled grid, the windows wholly in it are skipped and the bar east of it is found where it is."""
    from rasterio.enums import ColorInterp

    from serving.detect import DetectOptions, detect
    from serving.engine.pools import PoolConfig

    ref = dataclasses.replace(model_ref(BrightBarSpec(), window=512, overlap=100), gsd=RANGE)
    data = np.full((3, 2000, 3000), 40, np.uint8)
    data[:, BAR[1]:BAR[3], BAR[0]:BAR[2]] = 230
    profile = {"driver": "GTiff", "width": 3000, "height": 2000, "dtype": "uint8", "crs": "EPSG:32631",
               "transform": Affine(0.15, 0, 500000.0, 0, -0.15, 5000000.0), "tiled": True, "blockxsize": 256,
               "blockysize": 256}
    path = tmp_path / f"{mask}.tif"
    if mask == "nodata":
        data[:, :, :1000] = 0
        with rasterio.open(path, "w", count=3, nodata=0, **profile) as ds:
            ds.write(data)
    else:
        alpha = np.full((1, 2000, 3000), 255, np.uint8)
        alpha[:, :, :1000] = 0
        with rasterio.open(path, "w", count=4, **profile) as ds:
            ds.write(np.concatenate([data, alpha]))
            ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    result = detect(str(path), ref, DetectOptions(), pool_config=PoolConfig(workers=0))
    assert result.resolution.regrid is not None and result.skipped == 3  # the windows wholly in the west third
    assert len(result.boxes) == 1
    want = [(BAR[0] + BAR[2]) / 2, (BAR[1] + BAR[3]) / 2, BAR[2] - BAR[0], BAR[3] - BAR[1]]
    assert result.boxes[0, :4] == pytest.approx(want, abs=2.0)
