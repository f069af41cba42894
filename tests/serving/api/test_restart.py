"""``kill -9`` of a ``hbdnet serve`` process in the middle of a job, then a restart on the same data folder:
the interrupted job runs again and finishes, the queued one runs, finished results are still served."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from serving.engine.detectors import NoopSpec


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(data_dir: Path, checkpoint: Path, port: int, log) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "HBDNET_API_KEY"}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "serving.cli.main", "serve", "--workers", "0", "--model",
                             str(checkpoint), "--data-dir", str(data_dir), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).parents[3])
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("hbdnet serve did not start: " + Path(log.name).read_text()[-2000:])


def test_kill_9_mid_job_then_restart(tmp_path, tiny_checkpoint, scene_file, wait_job):
    data = tmp_path / "data"
    port = _port()
    url = f"http://127.0.0.1:{port}"
    small = scene_file("small.tif", 300, 300).read_bytes()
    big = scene_file("big.tif", 1800, 1800).read_bytes()
    with open(tmp_path / "serve.log", "w") as log, httpx.Client(timeout=30) as client:
        proc = _start(data, tiny_checkpoint, port, log)
        try:
            done = client.post(f"{url}/jobs", files={"file": ("done.tif", small)}).json()["jobID"]
            assert wait_job(client, f"{url}/jobs/{done}")["status"] == "successful"
            result = client.get(f"{url}/jobs/{done}/results").content
            running = client.post(f"{url}/jobs", files={"file": ("big.tif", big)}).json()["jobID"]
            queued = client.post(f"{url}/jobs", files={"file": ("queued.tif", small)}).json()["jobID"]
            doc = wait_job(client, f"{url}/jobs/{running}", statuses=("running",))
            while (doc.get("windows") or {}).get("done", 0) == 0:
                time.sleep(0.05)
                doc = client.get(f"{url}/jobs/{running}").json()
        finally:
            proc.kill()  # SIGKILL: no shutdown code runs
            proc.wait(timeout=30)
        assert doc["status"] == "running" and doc["windows"]["done"] < doc["windows"]["total"]

        proc = _start(data, tiny_checkpoint, port, log)
        try:
            listed = {j["jobID"]: j["status"] for j in client.get(f"{url}/jobs").json()["jobs"]}
            assert set(listed) == {done, running, queued}  # nothing submitted is lost
            assert listed[done] == "successful"
            assert client.get(f"{url}/jobs/{done}/results").content == result
            again = wait_job(client, f"{url}/jobs/{running}", timeout=180)
            assert again["status"] == "successful", again  # run again from the start
            assert wait_job(client, f"{url}/jobs/{queued}")["status"] == "successful"
            assert client.get(f"{url}/jobs/{running}/results").status_code == 200
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def test_a_job_interrupted_twice_is_failed_with_the_reason(tmp_path, tiny_checkpoint):
    """The restart rule without processes: a record found running with two attempts is failed."""
    from serving.api.service import INTERRUPTED, JobService
    from serving.api.settings import Settings
    from serving.api.store import JobRecord, SqliteJobStore, now
    from serving.model_ref import model_ref


    settings = Settings(data_dir=tmp_path, workers=0)
    settings.jobs_dir.mkdir(parents=True)
    store = SqliteJobStore(settings.db_path)
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    t = now()
    for job_id, attempts in (("11111111-1111-4111-8111-111111111111", 1), ("22222222-2222-4222-8222-222222222222", 2)):
        store.create(JobRecord(id=job_id, status="running", source="upload", options={}, created=t, updated=t,
                               attempts=attempts))
    store.close()
    service = JobService(settings, model_ref(NoopSpec()))
    service.recover()
    once, twice = (service.store.get(i) for i in ("11111111-1111-4111-8111-111111111111",
                                                  "22222222-2222-4222-8222-222222222222"))
    assert once.status == "accepted" and once.message == "queued again after a restart"
    assert twice.status == "failed" and twice.message == INTERRUPTED and twice.message.startswith("interrupted")
    service.store.close()


def test_a_server_stopped_mid_job_queues_the_job_again(serve, client, scene_file, wait_job, tmp_path):
    """A graceful stop (SIGTERM, Ctrl-C) ends the running job at the pool's next check and leaves it
    queued, not counted as an attempt; the next start runs it."""
    from serving.api.store import SqliteJobStore

    server = serve()
    r = client.post(f"{server.url}/jobs", files={"file": ("big.tif", scene_file("big.tif", 1500, 1500).read_bytes())})
    doc = wait_job(client, r.headers["location"], statuses=("running",))
    while (doc.get("windows") or {}).get("done", 0) == 0:
        time.sleep(0.05)
        doc = client.get(r.headers["location"]).json()
    t = time.perf_counter()
    server.stop()
    assert time.perf_counter() - t < 20
    store = SqliteJobStore(tmp_path / "data" / "jobs.sqlite3")
    job = store.get(doc["jobID"])
    store.close()
    assert job.status == "accepted" and job.attempts == 0 and "server stopped" in job.message
    again = serve()
    assert wait_job(client, f"{again.url}/jobs/{doc['jobID']}")["status"] == "successful"
