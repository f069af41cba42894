"""Model workers: in-process and Ray pools give the same window results; dead actors are replaced;
a batch keeps several scenes in flight through one Ray pool and writes what a sequential run writes.

The Ray tests share one local runtime with 2 CPUs (module-scoped ``ray_runtime`` fixture).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from hbdnet.pyramid import PlanWindow
from serving.batch.inputs import expand_inputs
from serving.detect import SceneResult
from serving.engine.detectors import ModelSpec, NoopDetector, NoopSpec
from serving.engine.pools import InProcessPool, PoolConfig, RayPool, cpus_per_actor, make_pool
from serving.engine.reader import ReadItem, WindowReader, plan_scene
from serving.engine.scene import open_scene
from serving.engine.tasks import SceneJob, WindowTask, make_tasks
from serving.engine.worker import WindowWorker
from serving.model_ref import model_ref
from serving.testing.engine_runs import detect_file as detect_scene
from serving.testing.simulate import PerfectSpec, synthetic_scene

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
    return detect_scene(scene_path, PerfectSpec(bridges), workers=0, window=WINDOW,
                        overlap=OVERLAP)


@pytest.fixture(scope="module")
def pool2(ray_runtime, bridges) -> Iterator[RayPool]:
    """Two CPU actors with the perfect detector, shared by the Ray tests (actor start-up imports torch)."""
    with RayPool(PerfectSpec(bridges), PoolConfig(workers=2, task_windows=2)) as pool:
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


def test_worker_keeps_the_two_latest_scenes_open(scene_path, geotiff):
    spec = plan_scene(open_scene(scene_path), window=WINDOW).spec
    worker = WindowWorker(NoopSpec(), readers=2)
    items = (ReadItem(0, PlanWindow(0, 1, 0, 0, 64, 64)),)
    worker.run(WindowTask(spec, items))
    first = worker.reader(spec)
    other = plan_scene(open_scene(str(geotiff("other.tif", np.zeros((3, 100, 100), np.uint8))))).spec
    third = plan_scene(open_scene(str(geotiff("third.tif", np.zeros((3, 90, 90), np.uint8))))).spec
    for _ in range(3):  # two scenes interleaved: neither is reopened
        worker.run(WindowTask(other, items))
        worker.run(WindowTask(spec, items))
    assert worker.reader(spec) is first
    second = worker.reader(other)
    worker.run(WindowTask(third, items))  # a third scene closes the least recently used one (spec)
    assert worker.reader(other) is second
    assert worker.reader(spec) is not first and all(r._ds.closed for r in first._all)
    worker.close()
    assert all(r._ds.closed for r in second._all)


def test_reads_run_ahead_on_threads_and_match_single_reads(scene_path):
    spec = plan_scene(open_scene(scene_path), window=WINDOW).spec
    items = tuple(ReadItem(i, w) for i, w in enumerate(plan_scene(open_scene(scene_path), window=WINDOW).plan))
    seen: list[tuple[int, str]] = []

    class Recorder:
        name = "recorder"

        def detect(self, images, windows):
            seen.extend((int(im.sum()), str(w)) for im, w in zip(images, windows))
            return [(np.zeros((0, 5), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in images]

    threaded = WindowWorker(NoopSpec(), read_threads=3)
    threaded.detector = Recorder()
    threaded.run(WindowTask(spec, items))
    assert len(threaded.reader(spec)._all) == 3
    with WindowReader(spec) as single:
        expected = [(int(single.read(it.window, it.needs_mask).sum()), str(it.window)) for it in items]
    assert seen == expected  # same pixels, in plan order, whatever thread read them
    threaded.close()


def test_detector_specs_build_their_detectors(bridges):
    assert isinstance(NoopSpec().build(), NoopDetector)
    perfect = PerfectSpec(bridges).build()
    (boxes, scores, labels), = perfect.detect([np.zeros((3, 1024, 1024), np.uint8)], [PlanWindow(1, 2, 0, 0, 750, 650)])
    assert boxes.shape[1] == 5 and len(boxes) == len(scores) == len(labels) > 0
    # What identifies a detector for outputs and manifests: its weights (here, its truth).
    assert PerfectSpec(bridges).fingerprint() == PerfectSpec(bridges.copy()).fingerprint()
    assert PerfectSpec(bridges[:1]).fingerprint() != PerfectSpec(bridges).fingerprint()
    assert not NoopSpec().uses_gpu and ModelSpec("m.pth", device="auto").uses_gpu


def test_results_do_not_depend_on_the_number_of_workers(ray_runtime, pool2, scene_path, bridges, reference):
    spec = PerfectSpec(bridges)
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


def test_a_killed_worker_is_restarted_and_the_result_is_complete(pool2, scene_path, reference):
    """A worker process that dies mid-scene (SIGKILL, as the OOM killer does) is restarted by Ray and
    its tasks run again on the actors that are up: the scene's windows are all there, as without the crash."""
    scene_plan = plan_scene(open_scene(scene_path), window=WINDOW, overlap=OVERLAP)
    before = pool2.worker_pids()
    killed = []

    def kill_first_worker(done: int, total: int) -> None:
        if not killed:
            killed.append(before[0])
            os.kill(before[0], signal.SIGKILL)

    run = pool2.run(scene_plan.spec, scene_plan.items, progress=kill_first_worker)
    assert killed
    after = pool2.worker_pids()
    assert len(after) == 2 and after[0] != before[0] and after[1] == before[1]  # restarted in place
    _same_windows(run.detections, reference.window_detections)


def test_a_pool_whose_workers_are_gone_for_good_fails_its_scenes_at_once(ray_runtime, scene_path, bridges):
    """The only actor killed with no restart left (``max_attempts=1``): the scene it ran fails with the
    reason, and so does the next one, at once, instead of waiting for a worker that cannot come back
    (the run is on a thread, so that a wait for ever fails the test instead of blocking it)."""
    scene_plan = plan_scene(open_scene(scene_path), window=WINDOW, overlap=OVERLAP)
    config = PoolConfig(workers=1, task_windows=2, max_attempts=1, ray_one_pass=False)
    with RayPool(PerfectSpec(bridges), config) as pool:
        alive = pool.worker_pids()

        def kill_once(done: int, total: int) -> None:
            if alive:
                os.kill(alive.pop(), signal.SIGKILL)

        jobs = [SceneJob(scene_plan.spec, scene_plan.items, kill_once), SceneJob(scene_plan.spec, scene_plan.items)]
        results: list = []
        run = threading.Thread(target=lambda: results.extend(pool.run_many(jobs)), daemon=True)
        run.start()
        run.join(timeout=60)
        assert not run.is_alive(), "the pool still waits for a worker that cannot come back"
    (_, first), (_, second) = results
    assert isinstance(first, RuntimeError) and "lost its worker 1 times" in str(first), first
    assert isinstance(second, RuntimeError) and "every one of the 1 workers was lost" in str(second), second


def test_cpu_actors_get_a_share_that_fits_on_a_node():
    assert cpus_per_actor(2, 3, [3]) == 1  # one machine: an equal share of the free CPUs
    assert cpus_per_actor(2, 4, [2, 2]) == 2  # one actor on each node
    assert cpus_per_actor(1, 32, [8, 8, 8, 8]) == 8  # a node's CPUs, never the cluster's
    assert cpus_per_actor(6, 32, [8, 8, 8, 8]) == 4  # with 5 each, two of the six would find no node
    assert cpus_per_actor(3, 0, []) == 1


def test_in_process_pool_is_reusable_across_scenes(scene_path, geotiff, bridges):
    other = str(geotiff("small.tif", np.zeros((3, 200, 250), np.uint8)))
    with InProcessPool(PerfectSpec(bridges)) as pool:
        a = detect_scene(scene_path, NoopSpec(), pool=pool, window=WINDOW, overlap=OVERLAP)
        b = detect_scene(other, NoopSpec(), pool=pool, window=WINDOW, overlap=OVERLAP)
    assert len(a.window_detections) == a.windows and len(b.window_detections) == b.windows == 1
    assert len(a.scores) > 0  # the pool's detector ran, not the spec passed alongside it


@pytest.fixture(scope="module")
def scene_copy(scene_path, tmp_path_factory) -> str:
    """The same pixels under another name: a second scene with the same windows and results."""
    path = tmp_path_factory.mktemp("workers_copy") / "copy.tif"
    path.write_bytes(Path(scene_path).read_bytes())
    return str(path)


def test_run_many_overlaps_scenes_and_fails_only_the_bad_one(pool2, scene_path, scene_copy, reference, tmp_path):
    plans = [plan_scene(open_scene(p), window=WINDOW, overlap=OVERLAP) for p in (scene_path, scene_copy)]
    bad = dataclasses.replace(plans[0].spec, uri=str(tmp_path / "gone.tif"))  # planned, then deleted
    jobs = [SceneJob(plans[0].spec, plans[0].items, key="first"), SceneJob(plans[1].spec, plans[1].items, key="second"),
            SceneJob(bad, plans[0].items[:3], key="bad")]
    runs, handled = {}, {}
    for job, result in pool2.run_many(jobs):
        runs[job.key] = result
        time.sleep(0.3)  # the caller merging and writing: the actors must not wait for it
        handled[job.key] = time.time()
    assert set(runs) == {"first", "bad", "second"}
    assert isinstance(runs["bad"], Exception) and "gone.tif" in str(runs["bad"])
    for key in ("first", "second"):
        _same_windows(runs[key].detections, reference.window_detections)
        assert 0 < runs[key].started < runs[key].finished
    # "second" was opened once every task of "first" was submitted (two scenes open at once), and its
    # tasks ran while the caller handled "first"; one after the other, they would start after that
    assert runs["second"].started < handled["first"]
    assert len(pool2.worker_pids()) == 2  # a task error does not cost a worker


def test_batch_through_ray_overlaps_scenes_and_equals_the_sequential_run(
        pool2, scene_path, scene_copy, bridges, tmp_path, monkeypatch):
    import pyogrio.raw

    import serving.batch.runner as batch

    model = model_ref(PerfectSpec(bridges), window=WINDOW, overlap=OVERLAP)
    small = tmp_path / "small.tif"
    with rasterio.open(scene_path) as src:  # a third scene, a corner of the first
        profile = {**src.profile, "width": 700, "height": 600}
        with rasterio.open(small, "w", **profile) as dst:
            dst.write(src.read(window=rasterio.windows.Window(0, 0, 700, 600)))
    scenes = expand_inputs([scene_path, scene_copy, str(small)])
    sequential = batch.run_batch(scenes, tmp_path / "seq", model, pool_config=PoolConfig(workers=0))

    written: list[tuple[str, float, float]] = []  # scene, its first task's start, the end of its write
    real_write = batch.write

    def slow_write(result, *args, **kwargs):
        time.sleep(0.3)  # a slow write, during which the next scene's tasks should run
        notes = real_write(result, *args, **kwargs)
        written.append((result.uri, result.started, time.time()))
        return notes

    monkeypatch.setattr(batch, "write", slow_write)
    parallel = batch.run_batch(scenes, tmp_path / "ray", model, pool=pool2)
    assert parallel.ran_ok == sequential.ran_ok == 3
    assert [w[0] for w in written] == [s.uri for s in scenes]  # here scenes finish in input order
    for (_, _, write_end), (_, next_start, _) in zip(written, written[1:]):
        assert next_start < write_end  # the next scene was already running while this one was written
    for r, ref in zip(parallel.records, sequential.records):
        assert (r["scene"], r["output"], r["detections"], r["windows"]) == (
            ref["scene"], ref["output"], ref["detections"], ref["windows"])
        got = pyogrio.raw.read(tmp_path / "ray" / r["output"], layer=Path(r["output"]).stem)
        want = pyogrio.raw.read(tmp_path / "seq" / ref["output"], layer=Path(ref["output"]).stem)
        assert list(got[2]) == list(want[2])  # the same geometries (WKB), in the same order
        for a, b in zip(got[3], want[3]):
            np.testing.assert_array_equal(a, b)


def _cancel_after(n: int):
    """A progress callback that records windows done, and a cancel that answers True from ``n`` on."""
    seen: list[int] = []
    return seen, (lambda done, total: seen.append(done)), (lambda: bool(seen) and seen[-1] >= n)


def test_in_process_cancel_stops_the_windows_and_the_pool_takes_the_next_scene(scene_path, reference):
    from serving.engine.tasks import Cancelled

    scene_plan = plan_scene(open_scene(scene_path), window=WINDOW, overlap=OVERLAP)
    total = len(scene_plan.items)
    calls: list[int] = []
    with InProcessPool(NoopSpec(), PoolConfig(workers=0, task_windows=4)) as pool:
        detect = pool._worker.detector.detect
        pool._worker.detector.detect = lambda images, windows: calls.append(len(images)) or detect(images, windows)
        seen, progress, cancel = _cancel_after(10)
        with pytest.raises(Cancelled, match=r"cancelled after 1\d of"):
            pool.run(scene_plan.spec, scene_plan.items, progress, cancel=cancel)
        assert total > 40 and 10 <= seen[-1] < 10 + 4
        assert sum(calls) == seen[-1]  # the windows computed are the ones reported: none after the cancel
        calls.clear()
        run = pool.run(scene_plan.spec, scene_plan.items)  # the same pool runs the next scene whole
    assert sum(calls) == total and len(run.detections) == total


def test_ray_cancel_stops_dispatching_and_the_pool_takes_the_next_scene(pool2, scene_path, reference):
    from serving.engine.tasks import Cancelled

    scene_plan = plan_scene(open_scene(scene_path), window=WINDOW, overlap=OVERLAP)
    total = len(scene_plan.items)
    seen, progress, cancel = _cancel_after(6)
    t = time.perf_counter()
    with pytest.raises(Cancelled):
        pool2.run(scene_plan.spec, scene_plan.items, progress, cancel=cancel)
    # task_windows=2: the cancel is seen at the first result past 6 windows; nothing after it is counted
    assert 6 <= seen[-1] <= 8 and seen[-1] < total
    run = pool2.run(scene_plan.spec, scene_plan.items)
    assert time.perf_counter() - t < 60
    _same_windows(run.detections, reference.window_detections)


def test_without_a_gpu_the_default_pool_runs_in_process_and_never_imports_torch(scene_path):
    """Ray only where it pays: no GPU to use and no workers asked for means no Ray and, for a
    detector that needs no model, no torch either (measured in a fresh interpreter)."""
    code = f"""
import sys
from serving.engine.detectors import NoopSpec
from serving.testing.engine_runs import detect_file
from serving.engine.pools import InProcessPool, PoolConfig, make_pool
with make_pool(NoopSpec(), PoolConfig()) as pool:
    assert isinstance(pool, InProcessPool), type(pool)
    detect_file({str(scene_path)!r}, NoopSpec(), pool=pool)
print("torch" in sys.modules, "ray" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_a_model_pinned_to_the_cpu_runs_in_process_and_workers_or_an_address_ask_for_ray(monkeypatch):
    import serving.engine.pools as workers

    started = []
    monkeypatch.setattr(workers, "RayPool", lambda spec, config: started.append(config) or "ray pool")
    cpu_model = ModelSpec(path="unused.pth", device="cpu")
    monkeypatch.setattr(workers, "InProcessPool", lambda spec, config: "in-process pool")
    assert make_pool(cpu_model, PoolConfig()) == "in-process pool"
    assert make_pool(NoopSpec(), PoolConfig(workers=2)) == "ray pool"
    assert make_pool(NoopSpec(), PoolConfig(ray_address="auto")) == "ray pool"
    monkeypatch.setattr(workers, "local_gpus", lambda spec: 2)
    assert make_pool(ModelSpec(path="unused.pth", device="auto"), PoolConfig()) == "ray pool"
    assert make_pool(ModelSpec(path="unused.pth", device="auto"), PoolConfig(workers=0)) == "in-process pool"


def test_ray_starts_without_its_token_notice(ray_runtime):
    import logging

    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    notice = logger.makeRecord(logger.name, logging.WARNING, __file__, 1,
                               "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled "
                               "to opt out.", None, None)
    other = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "something else", None, None)
    assert not logger.filter(notice) and logger.filter(other)


def test_ray_workers_read_urls_through_the_drivers_proxy(ray_runtime, bridges):
    """hbdnet serve sends every HTTP request of a scene through its href proxy, which refuses redirects
    to private addresses: its Ray workers' window reads too, with its timeouts."""
    import ray

    from serving.engine import scene

    before = scene.remote_access()
    scene.set_http_limits(request_s=7)
    scene.set_http_proxy("127.0.0.1:3128")
    try:
        with RayPool(PerfectSpec(bridges), PoolConfig(workers=1)) as pool:
            seen = ray.get(pool.actors[0].__ray_call__.remote(lambda worker: scene.scene_gdal_config()))
    finally:
        scene.use_remote_access(before)
    assert seen["GDAL_HTTP_PROXY"] == seen["GDAL_HTTPS_PROXY"] == "127.0.0.1:3128"
    assert seen["GDAL_HTTP_TIMEOUT"] == "7"
