"""Model workers: in-process and Ray pools give the same window results; dead actors are replaced.

The Ray tests share one local runtime with 2 CPUs (module-scoped ``ray_runtime`` fixture).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator

import numpy as np
import pytest
import rasterio
from affine import Affine

from hbdnet.pyramid import PlanWindow
from serving.detectors import DetectorSpec, NoopDetector, build_detector
from serving.engine import SceneResult, detect_scene
from serving.reader import ReadItem, plan_scene
from serving.scene import open_scene
from serving.simulate import synthetic_scene
from serving.workers import InProcessPool, PoolConfig, RayPool, WindowTask, WindowWorker, make_tasks

H, W, WINDOW, OVERLAP = 1300, 1500, 256, 56


@pytest.fixture(scope="module")
def bridges() -> np.ndarray:
    return synthetic_scene(H, W, n_bridges=12, length_range=(40, 1200), width_range=(6, 30), seed=1).boxes


@pytest.fixture(scope="module")
def scene_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("workers") / "scene.tif"
    data = np.random.default_rng(0).integers(0, 256, (3, H, W), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=W, height=H, count=3, dtype="uint8", tiled=True,
                       blockxsize=128, blockysize=128, crs="EPSG:32631",
                       transform=Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 5800000.0)) as ds:
        ds.write(data)
    return str(path)


@pytest.fixture(scope="module")
def reference(scene_path, bridges) -> SceneResult:
    """The in-process result every Ray run must reproduce."""
    return detect_scene(scene_path, DetectorSpec("perfect", ground_truth=bridges), workers=0, window=WINDOW,
                        overlap=OVERLAP)


@pytest.fixture(scope="module")
def pool2(ray_runtime, bridges) -> Iterator[RayPool]:
    """Two CPU actors with the perfect detector, shared by the Ray tests (actor start-up imports torch)."""
    with RayPool(DetectorSpec("perfect", ground_truth=bridges), PoolConfig(workers=2, task_windows=2)) as pool:
        yield pool


def _same_windows(a, b) -> None:
    assert [d.window for d in a] == [d.window for d in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.boxes, y.boxes)
        np.testing.assert_array_equal(x.scores, y.scores)
        np.testing.assert_array_equal(x.labels, y.labels)


def test_tasks_stay_within_one_row_and_level():
    wins = [PlanWindow(0, 1, c, r, 10, 10) for r in (0, 8) for c in range(0, 50, 8)] + [PlanWindow(1, 2, 0, 0, 10, 10)]
    items = [ReadItem(i, w) for i, w in enumerate(wins)]
    tasks = make_tasks(items, task_windows=4)
    assert [len(t) for t in tasks] == [4, 3, 4, 3, 1]
    assert [it for t in tasks for it in t] == items  # plan order kept
    for t in tasks:
        assert len({(it.window.level, it.window.row_off) for it in t}) == 1


def test_tasks_carry_descriptors_not_pixels(scene_path):
    scene_plan = plan_scene(open_scene(scene_path), window=WINDOW, overlap=OVERLAP)
    task = WindowTask(scene_plan.spec, tuple(scene_plan.items[:8]))
    assert len(pickle.dumps(task)) < 4000  # eight 256 px RGB windows would be 1.5 MB


def test_worker_keeps_the_scene_open_across_tasks(scene_path, geotiff):
    spec = plan_scene(open_scene(scene_path), window=WINDOW).spec
    worker = WindowWorker(DetectorSpec("noop"))
    items = (ReadItem(0, PlanWindow(0, 1, 0, 0, 64, 64)),)
    worker.run(WindowTask(spec, items))
    first = worker._reader
    worker.run(WindowTask(spec, items))
    assert worker._reader is first
    other = str(geotiff("other.tif", np.zeros((3, 100, 100), np.uint8)))
    worker.run(WindowTask(plan_scene(open_scene(other)).spec, items))
    assert worker._reader is not first and worker._reader.spec.uri == other
    worker.close()


def test_build_detector_kinds(bridges):
    assert isinstance(build_detector(DetectorSpec("noop")), NoopDetector)
    perfect = build_detector(DetectorSpec("perfect", ground_truth=bridges))
    (boxes, scores, labels), = perfect.detect([np.zeros((3, 1024, 1024), np.uint8)], [PlanWindow(1, 2, 0, 0, 750, 650)])
    assert boxes.shape[1] == 5 and len(boxes) == len(scores) == len(labels) > 0
    with pytest.raises(ValueError, match="ground_truth"):
        build_detector(DetectorSpec("perfect"))
    with pytest.raises(ValueError, match="unknown detector kind"):
        build_detector(DetectorSpec("magic"))  # type: ignore[arg-type]


def test_results_do_not_depend_on_the_number_of_workers(ray_runtime, pool2, scene_path, bridges, reference):
    spec = DetectorSpec("perfect", ground_truth=bridges)
    kwargs = dict(window=WINDOW, overlap=OVERLAP)
    assert sum(len(d.scores) for d in reference.window_detections) > len(bridges)
    with RayPool(spec, PoolConfig(workers=1, task_windows=3)) as pool1:
        assert len(pool1.actors) == 1
        one = detect_scene(scene_path, spec, pool=pool1, **kwargs)
    two = detect_scene(scene_path, spec, pool=pool2, **kwargs)
    assert len(pool2.actors) == 2
    for got in (one, two):
        _same_windows(got.window_detections, reference.window_detections)
        np.testing.assert_array_equal(got.boxes, reference.boxes)
        np.testing.assert_array_equal(got.scores, reference.scores)
        np.testing.assert_array_equal(got.levels, reference.levels)


def test_a_killed_worker_is_replaced_and_the_result_is_complete(pool2, scene_path, reference):
    import ray

    scene_plan = plan_scene(open_scene(scene_path), window=WINDOW, overlap=OVERLAP)
    killed = []

    def kill_first_worker(done: int, total: int) -> None:
        if not killed:
            killed.append(pool2.actors[0])
            ray.kill(pool2.actors[0])

    run = pool2.run(scene_plan.spec, scene_plan.items, progress=kill_first_worker)
    assert killed and pool2.actors[0] is not killed[0]
    assert len(pool2.worker_pids()) == 2  # the replacement works
    assert run.actors_replaced == 1 and run.resubmitted >= 1
    _same_windows(run.detections, reference.window_detections)


def test_in_process_pool_is_reusable_across_scenes(scene_path, geotiff, bridges):
    other = str(geotiff("small.tif", np.zeros((3, 200, 250), np.uint8)))
    with InProcessPool(DetectorSpec("perfect", ground_truth=bridges)) as pool:
        a = detect_scene(scene_path, DetectorSpec("noop"), pool=pool, window=WINDOW, overlap=OVERLAP)
        b = detect_scene(other, DetectorSpec("noop"), pool=pool, window=WINDOW, overlap=OVERLAP)
    assert len(a.window_detections) == a.windows and len(b.window_detections) == b.windows == 1
    assert len(a.scores) > 0  # the pool's detector ran, not the spec passed alongside it
