"""Running jobs: one model, one long-lived pool, one dispatcher thread, records in a ``JobStore``.

The model is loaded once when the service starts (``make_pool``: the engine's Ray actors, or the
in-process pool with ``workers=0``) and the pool stays up between jobs. A dispatcher thread takes
accepted jobs oldest first and runs each through the pool on the one scene path of ``hbdnet detect``
(``serving.detect.detect`` with a progress callback and a cancel hook, then ``write``), so the HTTP
side only reads records and never waits for a job.

Restart. Every accepted job is a committed row before its 202 is sent. At start, jobs found
``running`` (the server was killed while they ran) are queued again and run from the start, once:
a job interrupted a second time is failed with the reason "interrupted". Queued jobs run in order;
results on disk are served as before.

Cancel. ``dismiss`` marks the job dismissed at once; a queued job then never starts, and a running
one stops at the pool's next check (no further window is dispatched; see ``serving.engine.pools``),
after which its folder is deleted. A job that runs past ``job_timeout_s`` is stopped the same way and
failed with the reason.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rasterio.shutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from serving.api import href_proxy
from serving.api.href_policy import HrefPolicy, HrefRefused, check_href_host
from serving.api.job_cost import Cost, WindowRate
from serving.api.retention import describe_duration, folder_bytes
from serving.api.scene_checks import SceneChecks
from serving.api.settings import Settings
from serving.api.store import FINAL, JobRecord, JobStore, SqliteJobStore, now
from serving.detect import DetectOptions, PreparedScene, detect, write
from serving.engine.aoi import aoi_from_value
from serving.engine.gdal_errors import first_line
from serving.engine.pools import InProcessPool, PoolConfig, RayPool, make_pool
from serving.engine.reader import select_bands
from serving.engine.scene import (
    SceneError,
    SceneInfo,
    gdal_path,
    open_raster,
    public_href,
    set_http_limits,
    set_http_proxy,
    shown_as,
    trust_local_files,
)
from serving.engine.tasks import Cancelled
from serving.model_ref import ModelRef
from serving.outputs.formats import OUTPUT_FORMATS, OutputError
from serving.outputs.quicklook import write_quicklook

log = logging.getLogger("hbdnet.serve")

INPUT_NAME = "input"
FETCHED_NAME = "fetched.tif"  # an href's scene, copied for the workers of a cluster (JobService._fetch)
RESULT_STEM = "bridges"
QUICKLOOK_NAME = "quicklook.png"
INTERRUPTED = ("interrupted: the server stopped twice while this job ran; submit it again, and tell the "
               "operator if it happens again")


class QueueFull(Exception):
    pass


class DataFull(Exception):
    """The data folder has reached ``max_data_bytes``."""


class Metrics:
    def __init__(self, service: JobService):
        self.registry = CollectorRegistry()
        self.jobs = Gauge("hbdnet_jobs", "Jobs by state", ["state"], registry=self.registry)
        self.queue = Gauge("hbdnet_queue_length", "Jobs accepted and waiting to run", registry=self.registry)
        self.windows = Counter("hbdnet_windows_processed", "Windows run through the model", registry=self.registry)
        self.window_seconds = Histogram("hbdnet_window_seconds", "Seconds per window (wall time of a job's "
                                        "windows divided by their number, per progress step)",
                                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                        registry=self.registry)
        self.job_seconds = Histogram("hbdnet_job_seconds", "Seconds from start to end of finished jobs",
                                     buckets=(1, 5, 15, 60, 300, 900, 3600, 14400), registry=self.registry)
        self._service = service

    def refresh(self) -> None:
        counts = self._service.store.counts()
        for state, n in counts.items():
            self.jobs.labels(state).set(n)
        self.queue.set(counts.get("accepted", 0))


class JobService:
    """The jobs of one server: submission, the dispatcher, dismissal, recovery at start."""

    def __init__(self, settings: Settings, model: ModelRef, *, store: JobStore | None = None,
                 pool_factory: Callable[[], InProcessPool | RayPool] | None = None):
        self.settings = settings
        self.model = model
        settings.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.store: JobStore = store if store is not None else open_store(settings)
        # this process among the replicas of a shared store
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.scene_checks = SceneChecks(settings.max_checking)  # submitted hrefs, opened before their 202
        self.href_policy = HrefPolicy.of(settings)
        self.window_rate = WindowRate(settings.seconds_per_window)  # measured on finished jobs (job_cost)
        self._proxy: subprocess.Popen | None = None
        self._proxy_address: str | None = None
        self._pool_factory = pool_factory or (lambda: make_pool(model.spec, self._pool_config()))
        self.pool: InProcessPool | RayPool | None = None
        self.metrics = Metrics(self)
        self._lock = threading.RLock()  # status transitions and the queue-length check
        self._wake = threading.Condition(self._lock)
        self._cancel: dict[str, threading.Event] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._sweeper: threading.Thread | None = None
        self._heart: threading.Thread | None = None
        self.current: str | None = None

    def _pool_config(self) -> PoolConfig:
        given = {} if self.settings.read_threads is None else {"read_threads": self.settings.read_threads}
        return PoolConfig(workers=self.settings.workers, ray_address=self.settings.ray_address, **given)

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the workers (the model is loaded here, once), recover jobs, start the dispatcher."""
        set_http_limits(request_s=self.settings.http_timeout_s, connect_s=min(10, self.settings.http_timeout_s))
        trust_local_files(False)  # a local scene is a client's upload
        self._proxy, self._proxy_address = href_proxy.start(self.href_policy)  # also guards redirects
        set_http_proxy(self._proxy_address)
        self.recover()
        self.pool = self._pool_factory()
        self._thread = threading.Thread(target=self._dispatch, name="hbdnet-jobs", daemon=True)
        self._thread.start()
        self._heart = threading.Thread(target=self._heartbeat, name="hbdnet-heartbeat", daemon=True)
        self._heart.start()
        if self.settings.keep_results_s is not None:
            self._sweeper = threading.Thread(target=self._sweep, name="hbdnet-expiry", daemon=True)
            self._sweeper.start()

    def stop(self) -> None:
        """Stop the dispatcher (a running job goes back to the queue) and close the pool."""
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=60)
        for thread in (self._sweeper, self._heart):
            if thread is not None:
                thread.join(timeout=10)
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        self.scene_checks.close()
        if self._proxy is not None:
            set_http_proxy(None, replacing=self._proxy_address)
            self._proxy.kill()
            self._proxy.wait()
        trust_local_files(True)
        self.store.close()

    def recover(self) -> None:
        """Jobs found running go back to the queue (or fail, the second time): all of them with a store
        of this process alone, the stale ones (``take_over_stale``) with a shared one; the seconds per
        window measured by the last finished jobs are taken up again."""
        for job in reversed(self.store.page(50, 0)[0]):
            if job.status == "successful" and "stream" in job.timings:
                self.window_rate.add(job.timings["stream"], job.windows_total)
        self.take_over_stale(0.0 if not self.store.shared else self.settings.takeover_s)

    def take_over_stale(self, after_s: float) -> list[str]:
        """Running jobs whose replica has not beaten its heartbeat for ``after_s`` go back to the queue
        (or fail, the second time); of several replicas, one does it. Returns their ids."""
        taken = []
        for job in self.store.with_status("running"):
            alive = max(t for t in (job.heartbeat, job.updated) if t)  # a progress update says so too
            if after_s and alive > now(ago_s=after_s):
                continue
            if job.attempts >= 2:
                done = self.store.take_over(job, status="failed", finished=now(), message=INTERRUPTED)
                if done:
                    log.warning("job %s interrupted twice: failed", job.id)
            else:
                done = self.store.take_over(job, status="accepted", windows_done=0, replica=None, heartbeat=None,
                                            message="queued again after a restart", timings=_interrupted(job, alive))
                if done:
                    log.warning("job %s was running on %s, which stopped: queued again", job.id, job.replica)
            if done:
                taken.append(job.id)
        return taken

    def _heartbeat(self) -> None:
        """While a job runs here, beat its heartbeat; stop it when the store says it is not ours any more
        (dismissed through another replica, or taken over); with a shared store, take over stale jobs."""
        last_takeover = time.monotonic()
        while not self._stopping.wait(self.settings.heartbeat_s):
            try:
                job_id = self.current
                if job_id is not None and not self.store.beat(job_id, self.replica):
                    ev = self._cancel.get(job_id)
                    if ev is not None:
                        ev.set()
                if self.store.shared and time.monotonic() - last_takeover >= self.settings.takeover_s / 3:
                    last_takeover = time.monotonic()
                    if self.take_over_stale(self.settings.takeover_s):
                        with self._wake:
                            self._wake.notify_all()
            except Exception:  # a store that does not answer now may answer at the next beat
                log.exception("heartbeat failed")

    def ready(self) -> dict[str, bool]:
        return {"model": self.model is not None, "workers": self.pool is not None and self._thread is not None
                and self._thread.is_alive(), "store": self.store.writable() and _writable(self.settings.jobs_dir)}

    # -- files ---------------------------------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        return self.settings.jobs_dir / str(uuid.UUID(job_id))  # a uuid, never the client's string

    def input_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / INPUT_NAME

    def result_path(self, job_id: str, fmt: str) -> Path:
        if fmt not in (*OUTPUT_FORMATS, "qml"):
            raise ValueError(fmt)
        return self.job_dir(job_id) / f"{RESULT_STEM}.{fmt}"

    def quicklook_path(self, job_id: str) -> Path:
        """The scene's quicklook for the web page (``serving.outputs.quicklook``); its bounds beside it."""
        return self.job_dir(job_id) / QUICKLOOK_NAME

    @staticmethod
    def new_id() -> str:
        return str(uuid.uuid4())

    # -- submission ----------------------------------------------------------------------------
    def queue_length(self) -> int:
        return self.store.counts().get("accepted", 0)

    def check_queue(self) -> None:
        if self.queue_length() >= self.settings.max_queue:
            raise QueueFull()

    def data_room(self) -> int | None:
        """Bytes the data folder may still grow by (None: no cap); raises DataFull when there are none."""
        cap = self.settings.max_data_bytes
        if cap is None:
            return None
        room = cap - folder_bytes(self.settings.data_dir)
        if room <= 0:
            raise DataFull()
        return room

    # -- expiry ----------------------------------------------------------------------------------
    def expire(self) -> int:
        """Delete the files of jobs that finished more than ``keep_results_s`` ago; their records stay,
        marked expired. Returns how many jobs expired."""
        keep = self.settings.keep_results_s
        if keep is None:
            return 0
        expired = 0
        for job in self.store.finished_before(now(ago_s=keep)):
            with self._lock:
                current = self.store.get(job.id)
                if current is None or current.status not in ("successful", "failed") or current.expired:
                    continue
                shutil.rmtree(self.job_dir(job.id), ignore_errors=True)
                message = current.message if current.status == "failed" else (
                    f"the results were deleted: this server keeps results for {describe_duration(keep)}")
                self.store.update(job.id, expired=now(), message=message)
            expired += 1
            log.info("job %s of %s: files deleted after %s", job.id, _who(job.owner), describe_duration(keep))
        return expired

    def _sweep(self) -> None:
        """``expire`` now and then: a tenth of the keeping time, between 0.2 s and a minute."""
        interval = min(60.0, max(0.2, (self.settings.keep_results_s or 600.0) / 10))
        while not self._stopping.is_set():
            try:
                self.expire()
            except Exception:  # a failed sweep is retried at the next; it never stops the thread
                log.exception("deleting expired results failed")
            self._stopping.wait(interval)

    def submit(self, job_id: str, source: str, options: dict[str, Any], *, sync: bool = False,
               owner: str | None = None, cost: Cost | None = None) -> JobRecord:
        """Record an accepted job of ``owner`` (a key's name; raises QueueFull past ``max_queue``) with
        its ``cost`` (windows, estimated seconds) and wake the dispatcher."""
        with self._wake:
            self.check_queue()
            t = now()
            job = JobRecord(id=job_id, status="accepted", source=source, options=options, created=t, updated=t,
                            sync=sync, owner=owner, windows_total=cost.windows if cost else 0,
                            timings={"estimated": round(cost.seconds, 3)} if cost else {})
            self.store.create(job)
            self._wake.notify_all()
        log.info("job %s accepted from %s", job_id, _who(owner))
        return job

    def dismiss(self, job_id: str, *, by: str | None = None) -> JobRecord | None:
        """Dismiss a job: queued, it never starts; running, it stops; its files (upload, results) are
        deleted. The record stays, as ``dismissed``. ``by``: the key's name, for the log."""
        with self._lock:
            job = self.store.get(job_id)
            if job is None:
                return None
            if job.status != "dismissed":  # a finished job's results are deleted with it
                job = self.store.update(job_id, status="dismissed", finished=job.finished or now(),
                                        message="dismissed by the client")
                ev = self._cancel.get(job_id)
                if ev is not None:
                    ev.set()
        if self.current == job_id:  # the dispatcher drops the scene at the pool's next check
            deadline = time.monotonic() + 10
            while self.current == job_id and time.monotonic() < deadline:
                time.sleep(0.02)
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        log.info("job %s dismissed by %s", job_id, _who(by))
        return job

    # -- running -------------------------------------------------------------------------------
    def _next(self) -> JobRecord | None:
        """The next job this replica runs, claimed in the store (other replicas claim from it too: a job
        submitted to one of them wakes nobody here, so the store is asked again every half second)."""
        with self._wake:
            while not self._stopping.is_set():
                job = self.store.claim(self.replica)
                if job is not None:
                    self._cancel[job.id] = threading.Event()
                    self.current = job.id
                    return job
                self._wake.wait(timeout=0.5 if self.store.shared else 1.0)
        return None

    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            job = self._next()
            if job is None:
                return
            try:
                self._run(job)
            except Exception:  # never let one job stop the dispatcher
                log.exception("job %s: unexpected error", job.id)
                self._finish_failed(job.id, "internal error while running the job (see the server log)")
            finally:
                with self._lock:
                    self._cancel.pop(job.id, None)
                    self.current = None

    def _run(self, job: JobRecord) -> None:
        ev = self._cancel[job.id]
        opts = job.options
        folder = self.job_dir(job.id)
        uri = str(self.input_path(job.id)) if job.source == "upload" else job.source
        label = scene_label(job)

        def for_client(text: str) -> str:
            return _for_client(text, uri, folder, label)
        options = DetectOptions(score_thr=opts.get("score_threshold"), gsd=opts.get("gsd"),
                                resolution=opts.get("resolution"),
                                bands=tuple(opts["bands"]) if opts.get("bands") else None,
                                aoi=aoi_from_value(opts["aoi"]) if opts.get("aoi") else None,
                                max_pixels=self.settings.max_pixels)
        fmt = opts.get("format", "geojson")
        t0 = time.perf_counter()
        deadline = time.monotonic() + self.settings.job_timeout_s
        interrupted_s = job.timings.get("interrupted", 0.0)
        queued_s = _seconds_between(job.created, job.started) - interrupted_s  # waiting, not running
        timed_out = threading.Event()

        def cancel() -> bool:
            if time.monotonic() > deadline:
                timed_out.set()
            return ev.is_set() or self._stopping.is_set() or timed_out.is_set()

        last = {"t": time.perf_counter(), "done": 0, "saved": 0.0}

        def progress(done: int, total: int) -> None:
            t = time.perf_counter()
            step = done - last["done"]
            if step > 0:
                self.metrics.windows.inc(step)
                self.metrics.window_seconds.observe((t - last["t"]) / step)
            last.update(t=t, done=done)
            if t - last["saved"] >= 0.2 or done == total:  # the record, at most 5 times a second
                last["saved"] = t
                self.store.update(job.id, windows_done=done, windows_total=total)

        outputs = [self.result_path(job.id, fmt)]  # the format asked for is checked against the scene first

        def on_plan(prepared: PreparedScene) -> None:
            self.store.update(job.id, windows_total=len(prepared.plan.items),
                              notes=[for_client(n) for n in prepared.notes])

        try:
            folder.mkdir(parents=True, exist_ok=True)
            if job.source != "upload":  # its host may resolve elsewhere now than when it was accepted
                check_href_host(uri, self.href_policy)
                if self.settings.ray_address is not None:
                    uri = self._fetch(job.id, uri)
            result = detect(uri, self.model, options, outputs=outputs, pool=self.pool, progress=progress,
                            cancel=cancel, on_plan=on_plan)
            # Every format is written; GeoJSON is WGS84, so a scene without CRS has gpkg and fgb only.
            formats = [f for f in OUTPUT_FORMATS if f != "geojson" or result.scene.crs is not None]
            notes = [for_client(n) for n in write(result, [self.result_path(job.id, f) for f in formats], self.model,
                                                   scene_label=label)]
            if result.scene.crs is not None:
                self._write_quicklook(job.id, uri, result.scene, options.bands)
        except Cancelled:
            self._stopped(job, timed_out.is_set(), last["done"])
            return
        except (SceneError, OutputError, HrefRefused) as exc:
            self._finish_failed(job.id, for_client(str(exc)) or type(exc).__name__)
            return
        except Exception as exc:
            log.exception("job %s failed", job.id)
            self._finish_failed(job.id, f"detection failed: {type(exc).__name__}: {for_client(str(exc))}")
            return
        total_s = time.perf_counter() - t0
        timings = {k: round(v, 3) for k, v in result.timings.items()
                   if k in ("open", "plan", "merge", "read", "detect", "stream")}
        timings.update(queued=round(queued_s, 3), run=round(total_s, 3))
        if interrupted_s:
            timings["interrupted"] = round(interrupted_s, 3)
        if "estimated" in job.timings:
            timings["estimated"] = job.timings["estimated"]
        with self._lock:
            current = self.store.get(job.id)
            if current is None or current.status == "dismissed":
                shutil.rmtree(folder, ignore_errors=True)
                return
            if current.replica != self.replica:  # taken over meanwhile: the other replica's run stands
                return
            self.store.update(job.id, status="successful", finished=now(), windows_done=current.windows_total,
                              detections=len(result.scores), timings=timings, notes=notes, message=None)
        log.info("job %s successful: %d bridges in %d windows%s", job.id, len(result.scores), result.windows,
                 _by_node(result.nodes))
        self.metrics.job_seconds.observe(total_s)
        self.window_rate.add(result.timings.get("stream", 0.0), result.windows)
        self.input_path(job.id).unlink(missing_ok=True)  # the results are what is kept
        (self.job_dir(job.id) / FETCHED_NAME).unlink(missing_ok=True)

    def _fetch(self, job_id: str, href: str) -> str:
        """The scene at ``href`` copied into the job's folder by this process, through its guard proxy
        (``serving.api.href_proxy``), as a tiled GeoTIFF. With ``--ray-address`` the workers may run on
        machines that cannot reach that proxy: they read the copy, on the data folder the cluster
        shares, and never the href, so that no request of theirs escapes the href policy."""
        dest = self.job_dir(job_id) / FETCHED_NAME
        try:
            with open_raster(gdal_path(href), untrusted=True) as src:
                rasterio.shutil.copy(src, dest, driver="GTiff", TILED="YES", COMPRESS="DEFLATE", BIGTIFF="IF_SAFER")
        except Exception as exc:  # GDAL's errors come as several types, rasterio's private ones among them
            dest.unlink(missing_ok=True)
            raise SceneError(f"cannot read {href}: {first_line(exc)}") from None
        return str(dest)

    def _write_quicklook(self, job_id: str, uri: str, scene: SceneInfo, bands: tuple[int, ...] | None) -> None:
        """The web page's picture of the scene in the job's bands, made while the scene is still here; a
        job without one is still a success (the page then shows the bridges alone)."""
        try:
            bands = select_bands(scene, bands)
            with open_raster(gdal_path(uri), untrusted=True) as ds:
                write_quicklook(ds, bands[:1] if len(set(bands)) == 1 else bands, self.quicklook_path(job_id))
        except Exception:
            log.exception("job %s: no quicklook", job_id)

    def _stopped(self, job: JobRecord, timed_out: bool, done: int) -> None:
        with self._lock:
            current = self.store.get(job.id)
            if current is None or (current.status != "dismissed" and current.replica != self.replica):
                return  # taken over by another replica: its job now
            if current.status == "dismissed":
                shutil.rmtree(self.job_dir(job.id), ignore_errors=True)
            elif timed_out:
                self._finish_failed(job.id, f"the job ran longer than the limit of {self.settings.job_timeout_s:g} s "
                                            f"({done} of {current.windows_total} windows done)")
            else:  # the server is stopping: the job runs again at the next start, not counted as an attempt
                self.store.update(job.id, status="accepted", attempts=max(0, current.attempts - 1), windows_done=0,
                                  message="queued again: the server stopped while the job ran",
                                  timings=_interrupted(current, now()))

    def _finish_failed(self, job_id: str, message: str) -> None:
        with self._lock:
            current = self.store.get(job_id)
            if current is not None and current.status not in FINAL:
                self.store.update(job_id, status="failed", finished=now(), message=message)


def open_store(settings: Settings) -> JobStore:
    """The store ``settings.store`` names (PostgreSQL), else SQLite in the data folder."""
    if settings.store is None:
        return SqliteJobStore(settings.db_path)
    from serving.api.postgres_store import PostgresJobStore

    return PostgresJobStore(settings.store)


def scene_label(job: JobRecord) -> str:
    """The scene as its client named it: the uploaded file's name, or the href without its secrets."""
    return job.options.get("filename") or public_href(job.source)


def _by_node(nodes: dict[str, int]) -> str:
    """Where a job's windows ran, for the log: `` (windows by Ray node: ID=N, ...)``; "" in this process."""
    return f" (windows by Ray node: {', '.join(f'{k}={n}' for k, n in sorted(nodes.items()))})" if nodes else ""


def _who(name: str | None) -> str:
    """A key's name as the log shows it (never the key)."""
    return f"key {name!r}" if name is not None else "a client without a key"


def _for_client(text: str, uri: str, folder: Path, label: str) -> str:
    """The first line of ``text`` (a job's note or error) as its client may see it: the scene named
    ``label`` (their file name, or the href without its secrets), never by a server path, a GDAL path
    or the href as given; other files of the job's folder by their own names."""
    lines = text.strip().splitlines()
    line = shown_as(lines[0] if lines else "", uri, label).replace(str(folder / INPUT_NAME), label)
    return line.replace(f"{folder}/", "").replace(str(folder), "the job's folder")


def _interrupted(job: JobRecord, until: str) -> dict[str, float]:
    """``job``'s timings once its run from ``job.started`` to ``until`` is lost (the server stopped):
    ``interrupted`` adds up such runs, so that ``queued`` counts only the waiting (issue 19)."""
    lost = job.timings.get("interrupted", 0.0) + max(0.0, _seconds_between(job.started, until))
    return {**job.timings, "interrupted": round(lost, 3)}


def _seconds_between(a: str | None, b: str | None) -> float:
    import datetime as dt

    if not a or not b:
        return 0.0
    parse = lambda s: dt.datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return (parse(b) - parse(a)).total_seconds()


def _writable(folder: Path) -> bool:
    import os

    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)
