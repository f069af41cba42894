"""Stopping cleanly (issue 19, item 9): a job re-run after a restart does not count its interrupted run
as time queued, and neither a cancel nor a shutdown leaves a reader's generator to be closed where
GDAL's environment is gone (``Exception ignored in PyramidPass._decode ... EnvError``)."""

from __future__ import annotations

import datetime as dt
import gc
import sys
import time


def _running_with_windows(client, url: str, wait_job) -> dict:
    doc = wait_job(client, url, statuses=("running",))
    while (doc.get("windows") or {}).get("done", 0) == 0:
        time.sleep(0.02)
        doc = client.get(url).json()
    return doc


def _seconds(a: str, b: str) -> float:
    parse = lambda s: dt.datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return (parse(b) - parse(a)).total_seconds()


def test_time_queued_after_a_restart_leaves_out_the_interrupted_run(serve, client, scene_file, wait_job):
    server = serve()
    r = client.post(f"{server.url}/jobs", files={"file": ("big.tif", scene_file("big.tif", 1500, 1500).read_bytes())})
    _running_with_windows(client, r.headers["location"], wait_job)
    time.sleep(1.0)  # the first run goes on for a second at least
    assert client.get(r.headers["location"]).json()["status"] == "running"
    server.stop()  # the job goes back to the queue and runs again from the start
    again = serve()
    doc = wait_job(client, f"{again.url}/jobs/{r.json()['jobID']}")
    assert doc["status"] == "successful", doc
    waited = _seconds(doc["created"], doc["started"])  # the interrupted run and the restart
    assert doc["timings"]["queued"] <= waited - 1.0, (waited, doc["timings"])
    assert doc["timings"]["interrupted"] >= 1.0, doc["timings"]


def test_cancel_and_shutdown_close_the_readers_quietly(serve, client, scene_file, wait_job, monkeypatch):
    ignored: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: ignored.append(f"{u.object!r}: {u.exc_value!r}"))
    server = serve()
    big = scene_file("big.tif", 1500, 1500).read_bytes()
    first = client.post(f"{server.url}/jobs", files={"file": ("a.tif", big)})
    _running_with_windows(client, first.headers["location"], wait_job)
    assert client.delete(first.headers["location"]).status_code == 200  # cancel
    second = client.post(f"{server.url}/jobs", files={"file": ("b.tif", big)})
    _running_with_windows(client, second.headers["location"], wait_job)
    server.stop()  # shutdown mid-job
    gc.collect()
    assert ignored == []
