"""The service on the engine's Ray pool: the actors start once and run job after job; a dismissed job's
windows stop there too."""

from __future__ import annotations

import time


def test_jobs_run_on_one_long_lived_ray_pool(ray_runtime, serve, client, scene_file, wait_job):
    from serving.engine.pools import RayPool

    server = serve(workers=1)
    pool = server.service.pool
    assert isinstance(pool, RayPool)
    pids = pool.worker_pids()
    scene = scene_file("a.tif", 400, 400).read_bytes()
    first = client.post(f"{server.url}/jobs", files={"file": ("a.tif", scene)})
    second = client.post(f"{server.url}/jobs", files={"file": ("b.tif", scene)}, data={"format": "gpkg"})
    a, b = wait_job(client, first.headers["location"]), wait_job(client, second.headers["location"])
    assert a["status"] == b["status"] == "successful" and a["detections"] == b["detections"] > 0
    assert server.service.pool is pool and pool.worker_pids() == pids  # the same actors, no new ray.init

    big = client.post(f"{server.url}/jobs", files={"file": ("big.tif", scene_file("big.tif", 1400, 1400).read_bytes())})
    doc = wait_job(client, big.headers["location"], statuses=("running",))
    while (doc.get("windows") or {}).get("done", 0) == 0:
        time.sleep(0.05)
        doc = client.get(big.headers["location"]).json()
    t = time.perf_counter()
    assert client.delete(big.headers["location"]).json()["status"] == "dismissed"
    after = client.post(f"{server.url}/jobs", files={"file": ("c.tif", scene)})
    assert wait_job(client, after.headers["location"])["status"] == "successful"
    assert time.perf_counter() - t < 30  # the actor was free for the next job
    assert client.get(big.headers["location"]).json()["windows"]["done"] < doc["windows"]["total"]
