"""Guards for scenes with no real image: NaN and infinities as nodata, empty scenes and windows with a
one-line notice, boxes kept to the valid pixels and clipped to the scene (after the merge)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import rasterio
from affine import Affine

from serving.detect import DetectOptions, finish
from serving.engine.detectors import NoopSpec
from serving.engine.pools import PoolConfig
from serving.engine.reader import WindowReader, valid_at
from serving.engine.tasks import PoolRun
from serving.engine.valid_area import clip_to_scene, corners, keep_on_valid_pixels
from serving.merge.window_detections import WindowDetections
from serving.model_ref import model_ref
from serving.testing.engine_runs import detect_file as detect_scene
from serving.testing.engine_runs import detect_to_file, plan_file
from serving.testing.simulate import PerfectSpec

H, W = 300, 400


def float_tif(path, data: np.ndarray, nodata=None):
    c, h, w = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=c, dtype=data.dtype.name,
                       crs="EPSG:32631", transform=Affine(0.5, 0, 500000, 0, -0.5, 5800000), tiled=True,
                       blockxsize=128, blockysize=128, nodata=nodata) as ds:
        ds.write(data)
    return str(path)


def texture(c=1, h=H, w=W) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([(xx * 0.7 + yy * 0.3 + 40 * i) % 250 for i in range(c)]).astype(np.float32)


def run(path, truth, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = detect_scene(path, PerfectSpec(np.asarray(truth, float)), workers=0,
                              **kw)
    assert not [w for w in caught if w.category.__module__.startswith("serving.")]  # notes, not warnings
    return result, result.notes


# --- NaN and infinities are nodata ----------------------------------------------------------------------

def test_an_all_nan_float_scene_gives_no_detection_and_one_notice(tmp_path):
    path = float_tif(tmp_path / "nan.tif", np.full((1, H, W), np.nan, np.float32))  # no nodata declared
    result, caught = run(path, [[200.0, 150.0, 120.0, 12.0, 0.3]])
    assert len(result.boxes) == 0 and result.skipped == result.windows == 1
    (note,) = caught
    assert "no valid pixel" in note and "\n" not in note


def test_the_notice_reaches_the_caller_as_one_line(tmp_path):
    path = float_tif(tmp_path / "inf.tif", np.full((3, H, W), np.inf, np.float32))
    outcome = detect_to_file(path, tmp_path / "o.gpkg", model_ref(NoopSpec()),
                             pool_config=PoolConfig(workers=0))
    assert outcome.detections == 0
    (note,) = [n for n in outcome.notes if "no valid pixel" in n]
    assert "\n" not in note


def test_nan_and_infinite_pixels_are_invalid_and_boxes_centred_there_are_dropped(tmp_path):
    data = texture(3)
    data[:, :, :150] = np.nan  # the left part of every band
    data[0, 200:, 300:] = np.inf  # one band infinite, two finite: still a valid pixel (any band valid)
    data[:, :100, 300:] = -np.inf  # every band infinite: invalid
    path = float_tif(tmp_path / "part.tif", data)
    truth = [[75.0, 150.0, 60.0, 10.0, 0.0],  # centre on NaN
             [350.0, 50.0, 40.0, 10.0, 0.0],  # centre on -inf in every band
             [350.0, 250.0, 40.0, 10.0, 0.0],  # centre where one band is inf
             [250.0, 150.0, 80.0, 10.0, 0.0]]  # plain
    result, caught = run(path, truth)
    kept = sorted(map(tuple, np.round(result.boxes[:, :2])))
    assert kept == [(250.0, 150.0), (350.0, 250.0)]
    assert result.dropped == 2 and not caught

    prepared = plan_file(path)
    assert prepared.plan.spec.finite_only and prepared.plan.coverage is not None
    with WindowReader(prepared.plan.spec) as reader:
        (item,) = prepared.plan.items
        img = reader.read(item.window, item.needs_mask)
    assert (img[:, :, :150] == 0).all() and (img[:, :100, 300:] == 0).all()
    assert img[:, 200:, 300:].any() and img[:, 150:, 150:300].any()
    cols, rows = np.array([10, 160, 350, 350]), np.array([10, 10, 50, 250])
    assert list(valid_at(prepared.info, prepared.plan.spec, prepared.plan.coverage, cols, rows)) == [
        False, True, False, True]


def test_windows_of_nan_are_skipped_with_a_notice(tmp_path):
    data = texture(1, 600, 900)
    data[:, :, :450] = np.nan
    path = float_tif(tmp_path / "half.tif", data)
    result, caught = run(path, [[700.0, 300.0, 80.0, 10.0, 0.0]], window=256, overlap=56)
    assert result.skipped > 0 and len(result.boxes) == 1
    (note,) = caught
    assert f"{result.skipped} of {result.windows} windows have no valid pixel" in note and "\n" not in note


def test_a_declared_nodata_still_counts_with_nan(tmp_path):
    data = texture(1)
    data[:, :, :100] = -9999.0
    data[:, :, 300:] = np.nan
    path = float_tif(tmp_path / "nd.tif", data, nodata=-9999.0)
    result, _ = run(path, [[50.0, 150.0, 40.0, 10.0, 0.0], [350.0, 150.0, 40.0, 10.0, 0.0],
                           [200.0, 150.0, 40.0, 10.0, 0.0]])
    assert sorted(np.round(result.boxes[:, 0])) == [200.0]


# --- boxes kept to the scene, after the merge -----------------------------------------------------------

def test_boxes_from_the_padding_are_dropped_and_overhanging_ones_clipped(tmp_path):
    """A window larger than the scene is padded: boxes there (centre beyond the scene) go; boxes that
    overhang the scene are cut to it."""
    path = float_tif(tmp_path / "s.tif", texture(1))
    prepared = plan_file(path, window=512, overlap=100)
    (window,) = prepared.plan.plan  # one 300 x 400 window, padded to 512 by the worker
    boxes = np.array([[450.0, 100.0, 60.0, 10.0, 0.0],  # in the padding, right of the scene
                      [200.0, 320.0, 60.0, 10.0, 0.0],  # in the padding, below it
                      [390.0, 150.0, 40.0, 10.0, 0.0],  # overhangs the right edge by 10 px
                      [100.0, 5.0, 40.0, 20.0, 0.0],  # overhangs the top edge by 5 px
                      [200.0, 150.0, 40.0, 10.0, 0.3]])  # inside
    dets = WindowDetections(window, boxes.astype(np.float32), np.linspace(0.9, 0.5, 5).astype(np.float32),
                            np.zeros(5, np.int64))
    result = finish(prepared, PoolRun([dets]), model_ref(NoopSpec()), DetectOptions())
    assert result.dropped == 2 and result.clipped == 2 and len(result.boxes) == 3
    by_x = {round(b[0]): b for b in result.boxes}
    assert by_x[385] == pytest.approx([385.0, 150.0, 30.0, 10.0, 0.0], abs=1e-4)  # 370..400
    assert by_x[100] == pytest.approx([100.0, 7.5, 40.0, 15.0, 0.0], abs=1e-4)  # rows 0..15
    assert by_x[200] == pytest.approx([200.0, 150.0, 40.0, 10.0, 0.3], abs=1e-4)
    pts = corners(result.boxes)
    assert pts[..., 0].min() >= -1e-6 and pts[..., 0].max() <= W + 1e-6
    assert pts[..., 1].min() >= -1e-6 and pts[..., 1].max() <= H + 1e-6


def test_clipping_keeps_the_angle_and_le90():
    # A long box at 30 degrees crossing the left edge: cut where the border cuts its axis region.
    boxes = np.array([[20.0, 50.0, 100.0, 6.0, math.radians(30)]])
    (clipped,), over = clip_to_scene(boxes, 200, 100)
    assert over.tolist() == [True]
    assert clipped[4] == pytest.approx(math.radians(30)) and clipped[2] < 100 and clipped[3] == pytest.approx(6.0)
    # What is left of the box lies in the scene but for the oblique corners (at most h * sin(theta)).
    pts = corners(clipped[None])[0]
    assert pts[:, 0].min() >= -6.0 * math.sin(math.radians(30)) - 1e-9
    # A box cut to less than its height swaps w and h into le90 order.
    (short,), _ = clip_to_scene(np.array([[2.0, 50.0, 40.0, 10.0, 0.0]]), 200, 100)
    assert short == pytest.approx([11.0, 50.0, 22.0, 10.0, 0.0])
    (swapped,), _ = clip_to_scene(np.array([[1.0, 50.0, 12.0, 10.0, 0.0]]), 200, 100)
    assert swapped[2] >= swapped[3] and swapped == pytest.approx([3.5, 50.0, 10.0, 7.0, -math.pi / 2])


def test_unmasked_integer_scene_needs_no_read_to_keep_boxes(tmp_path, monkeypatch):
    import serving.engine.reader as reader

    path = float_tif(tmp_path / "u.tif", texture(1).astype(np.uint8))
    prepared = plan_file(path)
    assert prepared.plan.coverage is None
    monkeypatch.setattr(reader.rasterio, "open", lambda *a, **k: pytest.fail("opened the scene"))
    kept = keep_on_valid_pixels(np.array([[10.0, 10.0, 4.0, 2.0, 0.0], [-1.0, 10.0, 4.0, 2.0, 0.0]]),
                                prepared.info, prepared.plan.spec, prepared.plan.coverage)
    assert kept.keep.tolist() == [True, False] and kept.clipped == 0
