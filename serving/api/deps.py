"""Dependencies of the routes: the settings, the job service, the API key, links."""

from __future__ import annotations

import hmac
import uuid

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from serving.api.errors import OGC_EXCEPTIONS, ApiError
from serving.api.models import Link, StatusInfo, WindowProgress
from serving.api.service import JobService
from serving.api.settings import API_KEY_HEADER, Settings
from serving.api.store import JobRecord
from serving.outputs.formats import OUTPUT_FORMATS

_api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                               description="the server's API key, when it was started with one")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_service(request: Request) -> JobService:
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise ApiError(503, "the service is starting")
    return service


def require_api_key(key: str | None = Security(_api_key_header), settings: Settings = Depends(get_settings)) -> None:
    if settings.api_key and not (key and hmac.compare_digest(key.encode(), settings.api_key.encode())):
        raise ApiError(401, f"missing or wrong API key: send it in the {API_KEY_HEADER} header",
                       headers={"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'})


def get_job(job_id: str, service: JobService = Depends(get_service)) -> JobRecord:
    """The job named in the path; 404 for anything that is not the id of a job here."""
    try:
        canonical = str(uuid.UUID(job_id))
    except ValueError:
        canonical = None
    job = service.store.get(canonical) if canonical == job_id else None
    if job is None:
        raise ApiError(404, f"no job {job_id[:64]!r}", type_=OGC_EXCEPTIONS + "no-such-job")
    return job


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def status_info(job: JobRecord, request: Request) -> StatusInfo:
    base = base_url(request)
    links = [Link(href=f"{base}/jobs/{job.id}", rel="self", type="application/json", title="this job's status")]
    if job.status == "successful":
        from serving.api.models import MEDIA_TYPES

        fmt = job.options.get("format", "geojson")
        links.append(Link(href=f"{base}/jobs/{job.id}/results", rel="http://www.opengis.net/def/rel/ogc/1.0/results",
                          type=MEDIA_TYPES[fmt], title=f"the bridges ({fmt})"))
        for f in OUTPUT_FORMATS:
            links.append(Link(href=f"{base}/jobs/{job.id}/results?f={f}", rel="alternate", type=MEDIA_TYPES[f],
                              title=f"the bridges as {f}"))
    total, done = job.windows_total, job.windows_done
    progress = 100 if job.status == "successful" else (int(100 * done / total) if total else 0)
    timings = dict(job.timings) or None
    return StatusInfo(jobID=job.id, status=job.status, message=job.message, created=job.created, started=job.started,
                      finished=job.finished, updated=job.updated, progress=min(100, progress), links=links,
                      windows=WindowProgress(done=done, total=total) if total else None, timings=timings,
                      detections=job.detections, format=job.options.get("format"), notes=job.notes or None)
