"""DELETE of a running job stops its windows (counted at the detector) and the pool takes the next job."""

from __future__ import annotations

import time


def test_dismissing_a_running_job_stops_its_windows_and_the_next_job_runs(serve, client, scene_file, wait_job):
    server = serve()
    detector = server.service.pool._worker.detector
    computed: list[int] = []
    detect = detector.detect
    detector.detect = lambda images, windows, **kw: computed.append(len(images)) or detect(images, windows, **kw)

    big = client.post(f"{server.url}/jobs", files={"file": ("big.tif", scene_file("big.tif", 2000, 2000).read_bytes())})
    small = client.post(f"{server.url}/jobs", files={"file": ("small.tif", scene_file("small.tif", 300, 300).read_bytes())})
    assert big.status_code == small.status_code == 202
    big_url, small_url = big.headers["location"], small.headers["location"]
    doc = wait_job(client, big_url, statuses=("running",))
    while (doc.get("windows") or {}).get("done", 0) < 20:
        time.sleep(0.02)
        doc = client.get(big_url).json()
    total = doc["windows"]["total"]

    t = time.perf_counter()
    r = client.delete(big_url)
    assert r.status_code == 200 and r.json()["status"] == "dismissed"
    assert time.perf_counter() - t < 5
    at_dismiss = sum(computed)
    small_doc = wait_job(client, small_url)
    assert small_doc["status"] == "successful"
    small_windows = small_doc["windows"]["total"]
    # after the DELETE, at most the task in hand (8 windows) of the big job is computed; then the small job's
    assert sum(computed) - small_windows - at_dismiss <= 8
    assert at_dismiss < total / 4
    big_doc = client.get(big_url).json()
    assert big_doc["status"] == "dismissed" and big_doc["message"] == "dismissed by the client"
    assert not server.service.job_dir(big.json()["jobID"]).exists()  # its files are deleted
    assert client.get(f"{big_url}/results").status_code == 404


def test_dismissing_a_queued_job_means_it_never_starts(serve, client, scene_file, wait_job):
    server = serve()
    first = client.post(f"{server.url}/jobs", files={"file": ("a.tif", scene_file("a.tif", 1200, 1200).read_bytes())})
    queued = client.post(f"{server.url}/jobs", files={"file": ("b.tif", scene_file("b.tif", 300, 300).read_bytes())})
    assert client.delete(queued.headers["location"]).json()["status"] == "dismissed"
    client.delete(first.headers["location"])
    time.sleep(0.5)
    doc = client.get(queued.headers["location"]).json()
    assert doc["status"] == "dismissed" and "started" not in doc
    assert not server.service.job_dir(queued.json()["jobID"]).exists()
