"""Several ``hbdnet serve`` replicas on one PostgreSQL job store and one data folder: each a process of
its own, started and stopped by the test (the tiny model, in-process workers). A job posted to one is
read, fetched and cancelled through the other; 20 jobs posted across both run once each; a replica
killed with SIGKILL mid-job leaves its job to the other, which runs it to the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from serving.testing.servers import free_port, wait_ready

from .conftest import write_scene

HBDNET = Path(sys.executable).with_name("hbdnet")
TAKEOVER_S = 3


@pytest.fixture
def replicas(postgres_server, tiny_checkpoint, tmp_path):
    url = postgres_server()
    started: list[subprocess.Popen] = []

    def start(n: int = 2) -> list[tuple[str, subprocess.Popen]]:
        out = []
        for i in range(n):
            port = free_port()
            proc = subprocess.Popen(
                [str(HBDNET), "serve", "--data-dir", str(tmp_path / "data"), "--port", str(port), "--workers", "0",
                 "--model", str(tiny_checkpoint), "--device", "cpu", "--store", url,
                 "--takeover-after", str(TAKEOVER_S), "--max-windows", "20000", "--max-job-seconds", "100000"],
                stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"replica{i}.log", "w"),
                env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
            started.append(proc)
            out.append((f"http://127.0.0.1:{port}", proc))
        for base, proc in out:
            wait_ready(base, proc)
        return out

    start.db = url  # type: ignore[attr-defined]
    yield start
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def rows(url: str) -> dict[str, tuple]:
    import psycopg

    with psycopg.connect(url) as conn:
        return {r[0]: r[1:] for r in conn.execute("SELECT id, status, attempts, replica, windows_done FROM jobs")}


def post(base: str, scene: Path) -> str:
    r = httpx.post(f"{base}/jobs", files={"file": (scene.name, scene.read_bytes())}, timeout=60)
    assert r.status_code == 202, r.text
    return r.json()["jobID"]


def wait(base: str, job_id: str, statuses=("successful", "failed", "dismissed"), timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        doc = httpx.get(f"{base}/jobs/{job_id}", timeout=10).json()
        if doc["status"] in statuses:
            return doc
        assert time.monotonic() < deadline, doc
        time.sleep(0.1)


def running_on(started: list[tuple[str, subprocess.Popen]], replica: str) -> tuple[int, int]:
    """Indexes of the replica whose process runs a job (``replica`` is host:pid:tag) and of the other."""
    pid = int(replica.split(":")[1])
    mine = next(i for i, (_, proc) in enumerate(started) if proc.pid == pid)
    return mine, 1 - mine


def test_a_job_posted_to_one_replica_is_read_fetched_and_cancelled_through_the_other(replicas, tmp_path):
    started = replicas()
    (a, _), (b, _) = started
    small = write_scene(tmp_path / "small.tif", 300, 300)
    job = post(a, small)
    assert wait(b, job)["status"] == "successful"
    result = httpx.get(f"{b}/jobs/{job}/results?f=geojson", timeout=30)
    assert result.status_code == 200 and result.json()["type"] == "FeatureCollection"

    slow = post(b, write_scene(tmp_path / "slow.tif", 3000, 3000))
    wait(a, slow, statuses=("running",))
    while rows(replicas.db)[slow][3] < 50:  # under way
        time.sleep(0.05)
    runner, other = running_on(started, rows(replicas.db)[slow][2])
    # dismissed through the replica that does not run it: the runner hears of it at its next heartbeat
    assert httpx.delete(f"{started[other][0]}/jobs/{slow}", timeout=30).json()["status"] == "dismissed"
    time.sleep(3 * 2.0)
    status, _, _, done = rows(replicas.db)[slow]
    total = httpx.get(f"{started[runner][0]}/jobs/{slow}", timeout=10).json()["windows"]["total"]
    assert status == "dismissed" and done < total
    time.sleep(1.0)
    assert rows(replicas.db)[slow][3] == done  # no window since
    assert started[runner][1].poll() is None and httpx.get(f"{started[runner][0]}/readyz").status_code == 200


def test_twenty_jobs_posted_across_both_run_once_each(replicas, tmp_path):
    (a, _), (b, _) = replicas()
    scenes = [write_scene(tmp_path / f"s{i}.tif", 300, 300, seed=i) for i in range(20)]
    jobs = [post(a if i % 2 else b, scene) for i, scene in enumerate(scenes)]
    for job in jobs:
        assert wait(a, job)["status"] == "successful"
    runs = rows(replicas.db)
    assert {runs[j][0] for j in jobs} == {"successful"}
    assert [runs[j][1] for j in jobs] == [1] * 20  # each started once
    assert len({runs[j][2] for j in jobs}) == 2  # and both replicas ran some


def test_a_replica_killed_mid_job_leaves_the_job_to_the_other(replicas, tmp_path):
    (a, proc_a), (b, proc_b) = replicas()
    job = post(a, write_scene(tmp_path / "slow.tif", 3000, 3000))
    wait(b, job, statuses=("running",))
    time.sleep(0.5)
    replica = rows(replicas.db)[job][2]
    victim, survivor = (proc_a, b) if int(replica.split(":")[1]) == proc_a.pid else (proc_b, a)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    doc = wait(survivor, job, timeout=240)
    assert doc["status"] == "successful", doc
    status, attempts, ran_on, _ = rows(replicas.db)[job]
    assert attempts == 2 and ran_on != replica
    assert httpx.get(f"{survivor}/jobs/{job}/results", timeout=30).status_code == 200
