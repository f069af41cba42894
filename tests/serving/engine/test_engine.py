"""detect_scene end to end, in process: plan, read, detect (the perfect test double), merge."""

from __future__ import annotations

import time

import numpy as np
import pytest

import serving.detect as engine
from hbdnet.pyramid import plan_pyramid
from serving.detect import plan_beside_workers
from serving.engine.detectors import NoopSpec
from serving.engine.scene import SceneError
from serving.testing.engine_runs import detect_file as detect_scene
from serving.testing.simulate import PerfectSpec, score_against_truth, synthetic_scene

H, W, WINDOW, OVERLAP = 1300, 1500, 256, 56


@pytest.fixture(scope="module")
def bridges() -> np.ndarray:
    return synthetic_scene(H, W, n_bridges=12, length_range=(40, 1200), width_range=(6, 30), seed=1).boxes


def test_whole_bridges_come_out_of_the_pyramid(geotiff, bridges):
    path = str(geotiff("scene.tif", np.full((3, H, W), 90, np.uint8)))
    result = detect_scene(path, PerfectSpec(bridges), workers=0, window=WINDOW,
                          overlap=OVERLAP)
    plan = plan_pyramid(H, W, window=WINDOW, overlap=OVERLAP, max_side=WINDOW)
    assert result.windows == len(plan) and result.skipped == 0
    assert [d.window for d in result.window_detections] == plan
    assert (result.scene.width, result.scene.height) == (W, H)
    # Long bridges are cut into fragments at level 0; the merged output has each bridge once, whole.
    assert sum(len(d.scores) for d in result.window_detections) > 2 * len(bridges)
    score = score_against_truth(result.boxes, result.scores, bridges)
    assert score.recall == 1.0 and score.unmatched == 0
    assert result.boxes.shape == (len(result.scores), 5) and len(result.levels) == len(result.scores)
    assert set(result.levels) <= set(range(max(w.level for w in plan) + 1))
    for key in ("open", "plan", "startup", "stream", "read", "detect", "merge", "total"):
        assert result.timings[key] >= 0
    assert result.timings["total"] >= result.timings["stream"]


def test_windows_without_valid_pixels_never_reach_the_detector(geotiff):
    data = np.full((3, 1000, 1200), 50, np.uint8)
    data[:, :, :600] = 0  # nodata
    truth = np.array([[300.0, 500.0, 200.0, 12.0, 0.3],  # in the nodata half
                      [900.0, 500.0, 200.0, 12.0, -0.4]])  # in the valid half
    path = str(geotiff("half.tif", data, nodata=0))
    result = detect_scene(path, PerfectSpec(truth), workers=0, window=WINDOW,
                          overlap=OVERLAP)
    assert result.skipped > 0
    assert len(result.window_detections) == result.windows - result.skipped
    assert all(d.window.scene_bounds()[2] > 600 for d in result.window_detections)
    # The detector ignores pixels, so the first bridge still comes back from coarse windows that are
    # partly valid; the point is that no all-nodata window was read or detected on.
    assert np.abs(result.boxes[:, 0] - 900).min() < 5


def test_a_scene_without_valid_pixels_reads_nothing(geotiff):
    path = str(geotiff("empty.tif", np.zeros((1, 500, 600), np.uint16), nodata=0))
    result = detect_scene(path, NoopSpec(), workers=0, window=WINDOW, overlap=OVERLAP)
    assert result.skipped == result.windows > 1
    assert result.window_detections == [] and result.boxes.shape == (0, 5)


def test_progress_counts_every_window_read(geotiff):
    path = str(geotiff("scene.tif", np.zeros((3, 700, 900), np.uint8)))
    calls = []
    result = detect_scene(path, NoopSpec(), workers=0, window=WINDOW, overlap=OVERLAP,
                          progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (result.windows, result.windows)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert len(result.scores) == 0 and result.boxes.shape[1:] == (5,)


def test_single_band_uint16_scene_and_band_choice(geotiff):
    data = (np.arange(3 * 300 * 400, dtype=np.uint16) % 5000).reshape(3, 300, 400)
    path = str(geotiff("ms.tif", data))
    assert detect_scene(path, NoopSpec(), workers=0, bands=(3, 2, 1)).windows == 1
    with pytest.raises(SceneError, match="out of range"):
        detect_scene(path, NoopSpec(), workers=0, bands=(4, 2, 1))


def test_missing_scene(tmp_path):
    with pytest.raises(SceneError, match="not found"):
        detect_scene(str(tmp_path / "nope.tif"), NoopSpec(), workers=0)


def test_bad_scene_or_bands_fail_before_any_worker_starts(geotiff, tmp_path, monkeypatch):
    def no_workers(*args, **kwargs):
        raise AssertionError("workers started for a scene that cannot run")

    monkeypatch.setattr(engine, "make_pool", no_workers)
    with pytest.raises(SceneError, match="not found"):
        detect_scene(str(tmp_path / "nope.tif"), NoopSpec())
    path = str(geotiff("rgb.tif", np.zeros((3, 100, 100), np.uint8)))
    with pytest.raises(SceneError, match="out of range"):
        detect_scene(path, NoopSpec(), bands=(4, 2, 1))


class _Pool:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_scene_is_planned_while_the_workers_start():
    events: list[str] = []

    def plan():
        events.append("plan begins")
        time.sleep(0.3)
        events.append("plan ends")
        return "plan"

    def start():
        time.sleep(0.05)  # the planning thread is under way
        events.append("start begins")
        time.sleep(0.5)
        events.append("start ends")
        return _Pool()

    prepared, pool, startup = plan_beside_workers(plan, start)
    assert prepared == "plan" and isinstance(pool, _Pool) and not pool.closed and startup >= 0.5
    assert events.index("plan ends") < events.index("start ends")  # overlapped, not in turn


def test_failed_plan_closes_the_started_workers_and_raises():
    started = _Pool()

    def plan():
        raise SceneError("cannot plan")

    with pytest.raises(SceneError, match="cannot plan"):
        plan_beside_workers(plan, lambda: started)
    assert started.closed

    def start():
        raise RuntimeError("no workers")

    with pytest.raises(RuntimeError, match="no workers"):
        plan_beside_workers(lambda: "plan", start)
