"""Job records: a small interface (``JobStore``) and its SQLite implementation.

Everything the service knows about a job lives in one record (``JobRecord``); files (the upload,
the results) live under the data folder, named by the job id. ``SqliteJobStore`` keeps the records in
``DATA_DIR/jobs.sqlite3`` in WAL mode, one connection shared by the threads of the process behind a
lock: the store of one server process. ``serving.api.postgres_store`` is the store that several
replicas share (``shared``): a job is claimed by one replica (``claim``), which beats its heartbeat
while it runs (``beat``), and a job whose replica stopped beating is taken over (``take_over``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

STATUSES = ("accepted", "running", "successful", "failed", "dismissed")
FINAL = ("successful", "failed", "dismissed")


def now(ago_s: float = 0.0) -> str:
    """UTC now (or ``ago_s`` seconds before) as RFC 3339 (what the status documents carry)."""
    t = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=ago_s)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class JobRecord:
    """One job. ``source`` is ``"upload"`` or the href; ``options`` what shapes the output (format,
    score_thr, bands, model). Times are RFC 3339 strings (None until they happen)."""

    id: str
    status: str
    source: str
    options: dict[str, Any]
    created: str
    updated: str
    started: str | None = None
    finished: str | None = None
    message: str | None = None  # why a job failed, in the user's words
    windows_done: int = 0
    windows_total: int = 0
    detections: int | None = None
    attempts: int = 0  # times the job was started (a restart re-runs an interrupted job once)
    sync: bool = False  # submitted by a synchronous execution
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    owner: str | None = None  # the name of the API key that submitted the job (None: the server needs no key)
    expired: str | None = None  # when the job's files were deleted after --keep-results (the record stays)
    replica: str | None = None  # the server process that runs (or ran) the job
    heartbeat: str | None = None  # when that process last said it was still running it
    seq: int = 0  # insertion order (set by the store)


class JobStore(Protocol):
    """What the service needs from a job database."""

    def create(self, job: JobRecord) -> None: ...

    def get(self, job_id: str) -> JobRecord | None: ...

    def update(self, job_id: str, **changes: Any) -> JobRecord | None:
        """Set ``changes`` (and ``updated``); returns the new record, None if there is no such job."""
        ...

    def page(self, limit: int, offset: int, owner: str | None = None) -> tuple[list[JobRecord], int]:
        """Jobs newest first (only ``owner``'s when given), and how many there are."""
        ...

    def finished_before(self, when: str) -> list[JobRecord]:
        """Successful or failed jobs finished before ``when`` whose files have not expired yet."""
        ...

    def with_status(self, *statuses: str) -> list[JobRecord]:
        """Jobs in any of ``statuses``, oldest first."""
        ...

    def claim(self, replica: str) -> JobRecord | None:
        """The oldest accepted job, now running on ``replica`` (started, one more attempt, a first
        heartbeat), taken by one caller only; None when no job waits."""
        ...

    def beat(self, job_id: str, replica: str) -> bool:
        """``replica`` still runs ``job_id``: its heartbeat is now. False when the job is not running on
        ``replica`` any more (dismissed, or taken over)."""
        ...

    def take_over(self, job: JobRecord, **changes: Any) -> bool:
        """Apply ``changes`` to a running ``job`` if nobody has touched it since ``job`` was read (same
        replica, same heartbeat): one of several replicas takes a stale job over."""
        ...

    def counts(self) -> dict[str, int]: ...

    def writable(self) -> bool: ...

    def close(self) -> None: ...

    shared: bool  # several server processes use it (their running jobs are not this one's)


_COLUMNS = [f.name for f in dataclasses.fields(JobRecord)]
_JSON = {"options", "timings", "notes"}


def column_values(changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` to a record as the values of its columns (JSON text where the column holds JSON),
    ``updated`` now unless given; ``ValueError`` for a field that is not a column or cannot change."""
    unknown = set(changes) - set(_COLUMNS) - {"updated"}
    if unknown or "id" in changes or "seq" in changes:
        raise ValueError(f"cannot update {sorted(unknown | ({'id', 'seq'} & set(changes)))}")
    return {k: (json.dumps(v) if k in _JSON else v) for k, v in {"updated": now(), **changes}.items()}


class SqliteJobStore:
    shared = False

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: a committed job survives a kill of the process
        self._db.execute("""CREATE TABLE IF NOT EXISTS jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, status TEXT NOT NULL,
            source TEXT NOT NULL, options TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL,
            started TEXT, finished TEXT, message TEXT, windows_done INTEGER NOT NULL DEFAULT 0,
            windows_total INTEGER NOT NULL DEFAULT 0, detections INTEGER, attempts INTEGER NOT NULL DEFAULT 0,
            sync INTEGER NOT NULL DEFAULT 0, timings TEXT NOT NULL DEFAULT '{}', notes TEXT NOT NULL DEFAULT '[]')""")
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq)")
        have = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for column in ("owner", "expired", "replica", "heartbeat"):  # added later: older databases get them here
            if column not in have:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} TEXT")
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, seq)")

    def _row(self, row: sqlite3.Row | tuple | None) -> JobRecord | None:
        if row is None:
            return None
        values = dict(zip(self._names, row))
        for k in _JSON:
            values[k] = json.loads(values[k])
        values["sync"] = bool(values["sync"])
        return JobRecord(**values)

    @property
    def _names(self) -> list[str]:
        return _COLUMNS

    def _select(self, where: str = "", params: Iterable[Any] = (), tail: str = "") -> list[JobRecord]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM jobs {where} {tail}"
        with self._lock:
            rows = self._db.execute(sql, tuple(params)).fetchall()
        return [self._row(r) for r in rows]  # type: ignore[misc]

    def create(self, job: JobRecord) -> None:
        values = {k: getattr(job, k) for k in _COLUMNS if k != "seq"}
        for k in _JSON:
            values[k] = json.dumps(values[k])
        with self._lock:
            cur = self._db.execute(f"INSERT INTO jobs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                                   tuple(values.values()))
        job.seq = int(cur.lastrowid or 0)

    def get(self, job_id: str) -> JobRecord | None:
        rows = self._select("WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def update(self, job_id: str, **changes: Any) -> JobRecord | None:
        values = column_values(changes)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                             (*values.values(), job_id))
        return self.get(job_id)

    def page(self, limit: int, offset: int, owner: str | None = None) -> tuple[list[JobRecord], int]:
        where, params = ("WHERE owner = ?", (owner,)) if owner is not None else ("", ())
        with self._lock:
            (total,) = self._db.execute(f"SELECT COUNT(*) FROM jobs {where}", params).fetchone()
        return self._select(where, (*params, limit, offset), "ORDER BY seq DESC LIMIT ? OFFSET ?"), int(total)

    def finished_before(self, when: str) -> list[JobRecord]:
        # RFC 3339 strings of one format (``now()``) sort as the times they name
        return self._select("WHERE status IN ('successful', 'failed') AND expired IS NULL AND finished < ?",
                            (when,), "ORDER BY seq ASC")

    def with_status(self, *statuses: str) -> list[JobRecord]:
        marks = ", ".join("?" * len(statuses))
        return self._select(f"WHERE status IN ({marks})", statuses, "ORDER BY seq ASC")

    def claim(self, replica: str) -> JobRecord | None:
        with self._lock:
            # a write transaction from the start: another connection to the file cannot claim in between
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT id FROM jobs WHERE status = 'accepted' ORDER BY seq LIMIT 1").fetchone()
                if row is not None:
                    t = now()
                    self._db.execute("UPDATE jobs SET status = 'running', started = ?, attempts = attempts + 1, "
                                     "windows_done = 0, message = NULL, replica = ?, heartbeat = ?, updated = ? "
                                     "WHERE id = ?", (t, replica, t, t, row[0]))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.get(row[0]) if row is not None else None

    def beat(self, job_id: str, replica: str) -> bool:
        with self._lock:
            cur = self._db.execute("UPDATE jobs SET heartbeat = ? WHERE id = ? AND replica = ? AND status = 'running'",
                                   (now(), job_id, replica))
        return cur.rowcount == 1

    def take_over(self, job: JobRecord, **changes: Any) -> bool:
        values = column_values(changes)
        with self._lock:
            cur = self._db.execute(
                f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ? AND status = 'running' "
                "AND replica IS ? AND heartbeat IS ?", (*values.values(), job.id, job.replica, job.heartbeat))
        return cur.rowcount == 1

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        out = dict.fromkeys(STATUSES, 0)
        out.update({s: int(n) for s, n in rows})
        return out

    def writable(self) -> bool:
        """True when a write transaction can be taken now (disk, permissions and locks allow it)."""
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("ROLLBACK")
            return True
        except sqlite3.Error:
            return False

    def close(self) -> None:
        with self._lock:
            self._db.close()
