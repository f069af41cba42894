"""The in-process pool on the one-pass reader gives the detector the same pixels as the per-window reads."""

from __future__ import annotations

import threading
import zlib

import numpy as np
import pytest
from rasterio.enums import ColorInterp

from hbdnet.pyramid import PlanWindow
from serving.engine.detectors import NoopSpec
from serving.engine.pools import InProcessPool, PoolConfig
from serving.engine.reader import ReadItem, WindowReader, plan_scene
from serving.engine.scene import open_scene
from serving.engine.tasks import Cancelled
from serving.engine.worker import pass_results
from serving.testing.simulate import PerfectSpec, texture

WINDOW, OVERLAP = 256, 40


def checksum(image: np.ndarray) -> float:
    return float(zlib.crc32(np.ascontiguousarray(image).tobytes()) % 100_003)


class ChecksumDetector:
    """One box per window whose score is a checksum of the window's pixels (and of its context crops):
    equal detections mean the detector saw equal pixels."""

    name = "checksum"

    def __init__(self, context_levels: int = 0, context_size: int = WINDOW):
        self.context_levels, self.context_size = context_levels, context_size
        self.calls: list[int] = []

    def detect(self, images, windows: list[PlanWindow], contexts=None):
        self.calls.append(len(images))
        out = []
        for i, (img, win) in enumerate(zip(images, windows)):
            score = checksum(img) + sum(checksum(c) for c, _ in (contexts[i] if contexts else []))
            box = np.array([[win.width / 2, win.height / 2, 10.0, 5.0, 0.0]], np.float32)
            out.append((box, np.array([score], np.float32), np.zeros(1, np.int64)))
        return out


def run_pool(path: str, one_pass: bool, detector: ChecksumDetector, batch_size: int = 1, **plan_kw):
    plan = plan_scene(open_scene(path), window=WINDOW, overlap=OVERLAP, **plan_kw)
    with InProcessPool(NoopSpec(), PoolConfig(workers=0, one_pass=one_pass, batch_size=batch_size)) as pool:
        pool._worker.detector = detector
        seen: list[tuple[int, int]] = []
        run = pool.run(plan.spec, plan.items, progress=lambda d, t: seen.append((d, t)))
    return plan, run, seen


def same_detections(a, b) -> None:
    assert [d.window for d in a] == [d.window for d in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.scores, y.scores)
        np.testing.assert_array_equal(x.boxes, y.boxes)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_one_pass_pool_equals_the_per_window_pool_on_a_masked_uint16_scene(geotiff, monkeypatch, batch_size):
    data = texture(3, 1200, 1500, np.uint16, seed=7, high=3000)
    data[:, :, :600] = 0  # nodata: the left windows are empty and skipped
    path = str(geotiff("u16.tif", data, nodata=0))
    plan, by_window, _ = run_pool(path, False, ChecksumDetector(), batch_size)
    detector = ChecksumDetector()
    per_window_reads: list[PlanWindow] = []
    read = WindowReader.read
    monkeypatch.setattr(WindowReader, "read", lambda self, w, m=False: per_window_reads.append(w) or read(self, w, m))
    plan, by_pass, progress = run_pool(path, True, detector, batch_size)
    assert per_window_reads == []  # the pool read through the pass, not window by window
    assert plan.skipped and len(by_pass.detections) == len(plan.items)
    same_detections(by_pass.detections, by_window.detections)
    assert max(detector.calls) == batch_size  # windows batched, one level per batch
    assert progress[-1] == (len(plan.items), len(plan.items))


def test_context_crops_reach_a_fusing_detector_unchanged(geotiff):
    path = str(geotiff("rgb.tif", texture(3, 1300, 1400, seed=8), block=128))
    _, by_window, _ = run_pool(path, False, ChecksumDetector(context_levels=2))
    _, by_pass, _ = run_pool(path, True, ChecksumDetector(context_levels=2))
    same_detections(by_pass.detections, by_window.detections)


def test_empty_windows_found_by_the_pass_count_in_the_progress(geotiff):
    """Planned without a coverage scan, the windows with no valid pixel are found in the pass."""
    rgb = texture(3, 1200, 1300, seed=9)
    alpha = np.full((1, 1200, 1300), 255, np.uint8)
    alpha[:, :700] = 0
    path = str(geotiff("a.tif", np.concatenate([rgb, alpha]),
                       colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]))
    scanned = plan_scene(open_scene(path), window=WINDOW, overlap=OVERLAP)
    items = [ReadItem(i, w, True) for i, w in enumerate(scanned.plan)]
    detector = ChecksumDetector()
    done = 0
    for result, windows in pass_results(detector, scanned.spec, items, 2):
        done += windows
        assert len(result.detections) <= 2
    assert done == len(items) and sum(detector.calls) == len(scanned.items)


def test_cancel_stops_the_pass_and_a_decode_error_fails_the_scene(geotiff, tmp_path):
    path = str(geotiff("c.tif", texture(3, 1200, 1200, seed=10)))
    plan = plan_scene(open_scene(path), window=WINDOW, overlap=OVERLAP)
    detector = ChecksumDetector()
    with InProcessPool(NoopSpec(), PoolConfig(workers=0)) as pool:
        pool._worker.detector = detector
        with pytest.raises(Cancelled):
            pool.run(plan.spec, plan.items, cancel=lambda: sum(detector.calls) >= 5)
        assert sum(detector.calls) == 5
        assert not [t for t in threading.enumerate() if t.name == "hbdnet-pass-decode"]  # decoding stopped
        broken = type(plan.spec)(str(tmp_path / "gone.tif"), *list(plan.spec.__dict__.values())[1:])
        with pytest.raises(Exception, match="gone.tif"):
            pool.run(broken, plan.items)


def test_in_process_detect_scene_plans_without_a_coverage_scan_and_still_drops_boxes_on_nodata(geotiff,
                                                                                                monkeypatch):
    import serving.engine.reader as reader_module
    from serving.testing.engine_runs import detect_file as detect_scene

    data = np.full((3, 1000, 1200), 50, np.uint8)
    data[:, :, :600] = 0  # nodata
    truth = np.array([[300.0, 500.0, 200.0, 12.0, 0.3],  # in the nodata half
                      [900.0, 500.0, 200.0, 12.0, -0.4]])
    path = str(geotiff("half.tif", data, nodata=0))
    scans: list[bool] = []
    scan = reader_module.scan_scene
    monkeypatch.setattr(reader_module, "scan_scene", lambda *a, **k: scans.append(k["masked"]) or scan(*a, **k))
    result = detect_scene(path, PerfectSpec(truth), workers=0, window=WINDOW, overlap=OVERLAP)
    assert any("13 of 42 windows have no valid pixel" in note for note in result.notes)
    assert scans == []  # no pass over the mask before the first window
    scanned = plan_scene(open_scene(path), window=WINDOW, overlap=OVERLAP)
    assert scans == [True] and result.skipped == len(scanned.skipped) == 13
    assert len(result.window_detections) == result.windows - result.skipped
    # the first bridge comes back from coarse windows, and is dropped for its centre on nodata
    assert len(result.boxes) == 1 and abs(result.boxes[0, 0] - 900) < 5


def test_the_pool_passes_its_buffer_setting_to_the_pass(geotiff, monkeypatch):
    from serving.engine import pyramid_pass

    path = str(geotiff("b.tif", texture(3, 1100, 1300, seed=11)))
    plan = plan_scene(open_scene(path), window=WINDOW, overlap=OVERLAP)
    spilled: list[bool] = []
    init = pyramid_pass.LevelStore.__init__


    def recording_init(self, scale, height, width, bands, dtype, masked, path=None):
        spilled.append(path is not None)
        init(self, scale, height, width, bands, dtype, masked, path)

    monkeypatch.setattr(pyramid_pass.LevelStore, "__init__", recording_init)
    runs = []
    for buffer in (0, 2**30):
        with InProcessPool(NoopSpec(), PoolConfig(workers=0, pass_buffer_bytes=buffer)) as pool:
            pool._worker.detector = ChecksumDetector()
            runs.append(pool.run(plan.spec, plan.items))
    assert spilled == [True] * 3 + [False] * 3  # levels 1-3 in files, then in memory
    same_detections(runs[0].detections, runs[1].detections)


def test_detect_to_file_in_process_skips_the_coverage_scan_and_notes_the_empty_windows(geotiff, tmp_path,
                                                                                       monkeypatch):
    import serving.engine.reader as reader_module
    from serving.model_ref import ModelRef
    from serving.testing.engine_runs import detect_to_file

    data = np.full((3, 1000, 1200), 50, np.uint8)
    data[:, :, :600] = 0  # nodata
    path = str(geotiff("half.tif", data, nodata=0))
    scans: list[bool] = []
    scan = reader_module.scan_scene
    monkeypatch.setattr(reader_module, "scan_scene", lambda *a, **k: scans.append(True) or scan(*a, **k))
    model = ModelRef("noop", "0" * 64, NoopSpec(), window=WINDOW, overlap=OVERLAP)
    outcome = detect_to_file(path, tmp_path / "o.gpkg", model, pool_config=PoolConfig(workers=0))
    assert scans == []
    assert [n for n in outcome.notes if "13 of 42 windows have no valid pixel" in n]
