"""Ray actors reading in one pass (``PoolConfig.ray_one_pass``): the same window results as in process,
streamed batch by batch, with cancel and errors per scene."""

from __future__ import annotations

import numpy as np
import pytest

from serving.engine.detectors import NoopSpec
from serving.engine.pools import InProcessPool, PoolConfig, RayPool, reads_in_one_pass
from serving.engine.reader import plan_scene
from serving.engine.scene import open_scene
from serving.engine.tasks import Cancelled, SceneJob
from serving.testing.simulate import PerfectSpec

WINDOW, OVERLAP = 256, 40


def texture(c: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = (xx * 0.37 + yy * 0.21)[None] + np.arange(c)[:, None, None] * 17
    return ((base + rng.integers(0, 97, (c, h, w))) % 256).astype(np.uint8)


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    return np.array([[300.0, 500.0, 200.0, 12.0, 0.3], [900.0, 500.0, 200.0, 12.0, -0.4],
                     [700.0, 800.0, 400.0, 20.0, 1.0]])


@pytest.fixture(scope="module")
def pool(ray_runtime, truth):
    config = PoolConfig(workers=2, ray_one_pass=True, pass_buffer_bytes=0)  # levels in files, in the actor
    with RayPool(PerfectSpec(truth), config) as p:
        yield p


def test_streamed_passes_equal_the_in_process_pass(pool, truth, geotiff):
    data = texture(3, 1000, 1200)
    data[:, :, :600] = 0  # nodata: empty windows found by the pass in the actor
    paths = [str(geotiff("half.tif", data, nodata=0)), str(geotiff("full.tif", texture(3, 900, 1100, 1)))]
    plans = [plan_scene(open_scene(p), window=WINDOW, overlap=OVERLAP, coverage_scan=False) for p in paths]
    assert reads_in_one_pass(pool, "exact") and not reads_in_one_pass(pool, "overview")
    with InProcessPool(PerfectSpec(truth), PoolConfig(workers=0)) as local:
        expected = [local.run(p.spec, p.items) for p in plans]
    progress: list[tuple[int, int]] = []
    jobs = [SceneJob(p.spec, p.items, key=i, progress=lambda d, t: progress.append((d, t))) for i, p in enumerate(plans)]
    got = {job.key: run for job, run in pool.run_many(jobs)}
    for i, want in enumerate(expected):
        assert not isinstance(got[i], Exception)
        assert [d.window for d in got[i].detections] == [d.window for d in want.detections]
        for a, b in zip(got[i].detections, want.detections):
            np.testing.assert_array_equal(a.boxes, b.boxes)
        assert got[i].skipped == want.skipped
    assert got[0].skipped == 13 and got[1].skipped == 0
    assert len(progress) > 4  # streamed, not one result per scene
    assert (len(plans[0].items), len(plans[0].items)) in progress


def test_cancel_stops_the_stream_and_a_bad_scene_fails_alone(pool, geotiff, tmp_path):
    path = str(geotiff("c.tif", texture(3, 1200, 1300, 2)))
    plan = plan_scene(open_scene(path), window=WINDOW, overlap=OVERLAP)
    seen: list[int] = []
    with pytest.raises(Cancelled):
        pool.run(plan.spec, plan.items, progress=lambda d, t: seen.append(d), cancel=lambda: len(seen) >= 3)
    assert len(seen) == 3 and seen[-1] < len(plan.items)
    broken = type(plan.spec)(str(tmp_path / "gone.tif"), *list(plan.spec.__dict__.values())[1:])
    results = dict((job.key, run) for job, run in pool.run_many(
        [SceneJob(broken, plan.items, key="bad"), SceneJob(plan.spec, plan.items, key="good")]))
    assert isinstance(results["bad"], Exception) and "gone.tif" in str(results["bad"])
    assert len(results["good"].detections) == len(plan.items)


def test_a_lone_actor_reads_in_one_pass_and_several_read_window_by_window(pool):
    spec = NoopSpec()
    assert pool.config.ray_one_pass and pool.one_pass  # asked for
    assert reads_in_one_pass((spec, PoolConfig(workers=1)), "exact")
    assert not reads_in_one_pass((spec, PoolConfig(workers=2)), "exact")
    assert not reads_in_one_pass((spec, PoolConfig(workers=2)), "overview")
    assert reads_in_one_pass((spec, PoolConfig(workers=2, ray_one_pass=True)), "exact")
    # joining a cluster: its actors are not known before it is joined, so the plan scans for empty windows
    assert not reads_in_one_pass((spec, PoolConfig(ray_address="ray://elsewhere:10001")), "exact")


def test_a_pass_whose_actor_dies_runs_again_for_the_windows_not_back(ray_runtime, truth, geotiff):
    """The default one-actor pool reads in one pass; SIGKILL of its actor mid-pass (as the OOM killer
    does) restarts it and a second pass delivers the rest: the same results as an undisturbed run."""
    import os
    import signal

    data = texture(3, 1000, 1200, 3)
    data[:, :, :500] = 0  # empty windows, skipped by both passes and counted once
    path = str(geotiff("killed.tif", data, nodata=0))
    plan = plan_scene(open_scene(path), window=WINDOW, overlap=OVERLAP, coverage_scan=False)
    with InProcessPool(PerfectSpec(truth), PoolConfig(workers=0)) as local:
        want = local.run(plan.spec, plan.items)
    killed: list[int] = []
    with RayPool(PerfectSpec(truth), PoolConfig(workers=1, batch_size=1)) as lone:
        assert lone.one_pass and reads_in_one_pass(lone, "exact")
        pid = lone.worker_pids()[0]

        def kill_once(done: int, total: int) -> None:
            if not killed and done >= 3:
                killed.append(pid)
                os.kill(pid, signal.SIGKILL)

        got = lone.run(plan.spec, plan.items, progress=kill_once)
        assert killed and lone.worker_pids()[0] != pid  # restarted
    assert [d.window for d in got.detections] == [d.window for d in want.detections]
    for a, b in zip(got.detections, want.detections):
        np.testing.assert_array_equal(a.boxes, b.boxes)
    assert got.skipped == want.skipped > 0
