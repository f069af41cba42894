"""The job store that several ``hbdnet serve`` replicas share: PostgreSQL (``--store
postgresql://...``), through psycopg 3 and a small connection pool.

The schema is the service's own: created on first use and migrated in order (``MIGRATIONS``, the
version kept in ``hbdnet_schema``), under an advisory lock so that replicas starting together do it
once. A job is claimed with ``SELECT ... FOR UPDATE SKIP LOCKED``, so that each waiting job goes to
one replica only, however many ask at once. Times are RFC 3339 text, as ``SqliteJobStore`` keeps
them (they sort as the times they name).
"""

from __future__ import annotations

import json
from typing import Any

from serving.api.store import _COLUMNS, _JSON, STATUSES, JobRecord, column_values, now
from serving.engine.gdal_errors import first_line

# Each entry takes the schema from its index to the next version; never edit one that has shipped.
MIGRATIONS = [
    """CREATE TABLE jobs (
        seq BIGSERIAL PRIMARY KEY, id TEXT UNIQUE NOT NULL, status TEXT NOT NULL, source TEXT NOT NULL,
        options TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL, started TEXT, finished TEXT,
        message TEXT, windows_done INTEGER NOT NULL DEFAULT 0, windows_total INTEGER NOT NULL DEFAULT 0,
        detections INTEGER, attempts INTEGER NOT NULL DEFAULT 0, sync BOOLEAN NOT NULL DEFAULT FALSE,
        timings TEXT NOT NULL DEFAULT '{}', notes TEXT NOT NULL DEFAULT '[]', owner TEXT, expired TEXT,
        replica TEXT, heartbeat TEXT);
    CREATE INDEX jobs_status ON jobs (status, seq);
    CREATE INDEX jobs_owner ON jobs (owner, seq);""",
]
_LOCK_ID = 0x68626E6574  # "hbnet": the advisory lock of the migrations
_SELECT = ", ".join(_COLUMNS)


class StoreError(Exception):
    """The database cannot be reached or used (one line)."""


class PostgresJobStore:
    shared = True

    def __init__(self, url: str, *, max_connections: int = 8, timeout_s: float = 10.0):
        import psycopg
        from psycopg_pool import ConnectionPool

        self.url = url
        self._errors = (psycopg.Error, TimeoutError)
        try:
            self._pool = ConnectionPool(url, min_size=1, max_size=max_connections, timeout=timeout_s, open=True,
                                        kwargs={"autocommit": True, "connect_timeout": int(timeout_s)})
            self._pool.wait(timeout=timeout_s)
            self.migrate()
        except self._errors as exc:
            raise StoreError(f"cannot use the job store {_safe(url)}: {first_line(exc)}") from None

    def migrate(self) -> int:
        """Bring the schema to the last version; returns it."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            conn.execute("CREATE TABLE IF NOT EXISTS hbdnet_schema (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM hbdnet_schema").fetchone()
            version = row[0] if row else 0
            if row is None:
                conn.execute("INSERT INTO hbdnet_schema VALUES (0)")
            for step in MIGRATIONS[version:]:
                conn.execute(step)
            conn.execute("UPDATE hbdnet_schema SET version = %s", (len(MIGRATIONS),))
        return len(MIGRATIONS)

    def _rows(self, sql: str, params: tuple = ()) -> list[JobRecord]:
        with self._pool.connection() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [_record(r) for r in rows]

    def create(self, job: JobRecord) -> None:
        values = {k: getattr(job, k) for k in _COLUMNS if k != "seq"}
        for k in _JSON:
            values[k] = json.dumps(values[k])
        with self._pool.connection() as conn:
            (job.seq,) = conn.execute(f"INSERT INTO jobs ({', '.join(values)}) VALUES "
                                      f"({', '.join(['%s'] * len(values))}) RETURNING seq",
                                      tuple(values.values())).fetchone()

    def get(self, job_id: str) -> JobRecord | None:
        rows = self._rows(f"SELECT {_SELECT} FROM jobs WHERE id = %s", (job_id,))
        return rows[0] if rows else None

    def update(self, job_id: str, **changes: Any) -> JobRecord | None:
        values = column_values(changes)
        rows = self._rows(f"UPDATE jobs SET {', '.join(f'{k} = %s' for k in values)} WHERE id = %s "
                          f"RETURNING {_SELECT}", (*values.values(), job_id))
        return rows[0] if rows else None

    def page(self, limit: int, offset: int, owner: str | None = None) -> tuple[list[JobRecord], int]:
        where, params = ("WHERE owner = %s", (owner,)) if owner is not None else ("", ())
        with self._pool.connection() as conn:
            (total,) = conn.execute(f"SELECT COUNT(*) FROM jobs {where}", params).fetchone()
        return self._rows(f"SELECT {_SELECT} FROM jobs {where} ORDER BY seq DESC LIMIT %s OFFSET %s",
                          (*params, limit, offset)), int(total)

    def finished_before(self, when: str) -> list[JobRecord]:
        return self._rows(f"SELECT {_SELECT} FROM jobs WHERE status IN ('successful', 'failed') AND expired IS NULL "
                          "AND finished < %s ORDER BY seq", (when,))

    def with_status(self, *statuses: str) -> list[JobRecord]:
        return self._rows(f"SELECT {_SELECT} FROM jobs WHERE status = ANY(%s) ORDER BY seq", (list(statuses),))

    def claim(self, replica: str) -> JobRecord | None:
        t = now()
        rows = self._rows(
            f"UPDATE jobs SET status = 'running', started = %s, attempts = attempts + 1, windows_done = 0, "
            f"message = NULL, replica = %s, heartbeat = %s, updated = %s WHERE seq = (SELECT seq FROM jobs WHERE "
            f"status = 'accepted' ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING {_SELECT}",
            (t, replica, t, t))
        return rows[0] if rows else None

    def beat(self, job_id: str, replica: str) -> bool:
        with self._pool.connection() as conn:
            cur = conn.execute("UPDATE jobs SET heartbeat = %s WHERE id = %s AND replica = %s AND status = 'running'",
                               (now(), job_id, replica))
            return cur.rowcount == 1

    def take_over(self, job: JobRecord, **changes: Any) -> bool:
        values = column_values(changes)
        with self._pool.connection() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET {', '.join(f'{k} = %s' for k in values)} WHERE id = %s AND status = 'running' "
                "AND replica IS NOT DISTINCT FROM %s AND heartbeat IS NOT DISTINCT FROM %s",
                (*values.values(), job.id, job.replica, job.heartbeat))
            return cur.rowcount == 1

    def counts(self) -> dict[str, int]:
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        out = dict.fromkeys(STATUSES, 0)
        out.update({s: int(n) for s, n in rows})
        return out

    def writable(self) -> bool:
        try:
            with self._pool.connection(timeout=5) as conn, conn.transaction():
                conn.execute("SELECT 1 FROM jobs FOR UPDATE SKIP LOCKED LIMIT 0")
            return True
        except self._errors:
            return False

    def close(self) -> None:
        self._pool.close()


def _record(row: tuple) -> JobRecord:
    values = dict(zip(_COLUMNS, row, strict=True))
    for k in _JSON:
        values[k] = json.loads(values[k])
    return JobRecord(**values)


def _safe(url: str) -> str:
    """The URL without its password."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
