"""The PostgreSQL job store against a real PostgreSQL: the schema made and versioned once however many
replicas start together, each waiting job claimed by one replica only however many ask at once,
heartbeats, and a stale job taken over by one replica only; the service's own checks on both stores."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from serving.api.postgres_store import MIGRATIONS, PostgresJobStore, StoreError
from serving.api.store import JobRecord, SqliteJobStore, now


def job(i: int) -> JobRecord:
    t = now()
    return JobRecord(id=f"job-{i:03d}", status="accepted", source="upload", options={"format": "gpkg", "i": i},
                     created=t, updated=t, notes=["a note"], timings={"estimated": 1.5})


@pytest.fixture
def url(postgres_server) -> str:
    return postgres_server()


def test_the_schema_is_made_once_by_replicas_starting_together(url):
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: PostgresJobStore(url), range(4)))
    try:
        import psycopg

        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT version FROM hbdnet_schema").fetchall() == [(len(MIGRATIONS),)]
        assert stores[0].migrate() == len(MIGRATIONS)  # again: nothing to do
    finally:
        for s in stores:
            s.close()


def test_records_round_trip(url):
    store = PostgresJobStore(url)
    try:
        j = job(1)
        store.create(j)
        got = store.get("job-001")
        assert got is not None and got.options == {"format": "gpkg", "i": 1} and got.notes == ["a note"]
        assert got.seq == j.seq > 0 and got.sync is False and got.timings == {"estimated": 1.5}
        assert store.update("job-001", windows_total=7, timings={"run": 2.0}).timings == {"run": 2.0}
        assert store.update("nothing", status="failed") is None
        jobs, total = store.page(10, 0)
        assert total == 1 and jobs[0].windows_total == 7
        assert store.counts()["accepted"] == 1 and store.writable()
        with pytest.raises(ValueError):
            store.update("job-001", seq=3)
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_each_job_is_claimed_once_however_many_ask(kind, url, tmp_path):
    """Two stores (two replicas, or one process's threads for SQLite), eight threads claiming 40 jobs."""
    def make():
        return PostgresJobStore(url) if kind == "postgres" else SqliteJobStore(tmp_path / "jobs.sqlite3")

    stores = [make(), make()]
    try:
        for i in range(40):
            stores[0].create(job(i))
        claimed: list[str] = []
        lock = threading.Lock()

        def worker(n: int) -> None:
            store = stores[n % 2]
            while (got := store.claim(f"replica-{n}")) is not None:
                assert got.status == "running" and got.attempts == 1 and got.replica == f"replica-{n}"
                with lock:
                    claimed.append(got.id)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(claimed) == [f"job-{i:03d}" for i in range(40)]  # every job, each once
        assert stores[1].claim("late") is None
    finally:
        for s in stores:
            s.close()


def test_heartbeats_and_one_take_over(url):
    a, b = PostgresJobStore(url), PostgresJobStore(url)
    try:
        a.create(job(1))
        running = a.claim("replica-a")
        assert a.beat("job-001", "replica-a") and not a.beat("job-001", "replica-b")
        stale = b.get("job-001")
        # two replicas see the job stale at once: one takes it over
        results = [b.take_over(stale, status="accepted", replica=None, heartbeat=None),
                   a.take_over(stale, status="accepted", replica=None, heartbeat=None)]
        assert sorted(results) == [False, True]
        assert not a.beat("job-001", "replica-a")  # not its job any more
        again = b.claim("replica-b")
        assert again.id == running.id and again.attempts == 2 and again.replica == "replica-b"
        assert not a.take_over(stale, status="accepted")  # a stale view of it changes nothing
    finally:
        a.close()
        b.close()


def test_an_unreachable_store_is_one_line(postgres_server):
    with pytest.raises(StoreError, match="cannot use the job store postgresql://postgres:\\*\\*\\*@127.0.0.1:9/x"):
        PostgresJobStore("postgresql://postgres:secret@127.0.0.1:9/x", timeout_s=2)
