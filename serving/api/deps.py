"""Dependencies of the routes: the settings, the job service, the API key, links."""

from __future__ import annotations

import uuid

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from serving.api.errors import NO_SUCH_JOB, ApiError
from serving.api.keys import ApiKey, find_key
from serving.api.models import Link, StatusInfo, WindowProgress
from serving.api.service import JobService, scene_label
from serving.api.settings import API_KEY_HEADER, Settings
from serving.api.store import JobRecord
from serving.api.webpage import wants_html
from serving.outputs.formats import OUTPUT_FORMATS

_api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                               description="your API key, when the server was started with keys")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_service(request: Request) -> JobService:
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise ApiError(503, "the service is starting")
    return service


def require_api_key(request: Request, key: str | None = Security(_api_key_header)) -> ApiKey | None:
    """The caller's key (None when the server needs no key); 401 for a missing or unknown one."""
    keys: list[ApiKey] = request.app.state.keys
    if not keys:
        return None
    found = find_key(keys, key)
    if found is None:
        raise ApiError(401, f"missing or wrong API key: send it in the {API_KEY_HEADER} header",
                       headers={"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'})
    return found


def require_api_key_unless_page(request: Request, key: str | None = Security(_api_key_header)) -> ApiKey | None:
    """``require_api_key``, except for a browser asking for the web page, which holds no data."""
    if wants_html(request):
        return None
    return require_api_key(request, key)


def owner_of(caller: ApiKey | None) -> str | None:
    """The name new jobs are recorded under (None when the server needs no key)."""
    return caller.name if caller is not None else None


def visible_owner(caller: ApiKey | None) -> str | None:
    """Whose jobs the caller sees: None for all (an admin key, or a server without keys)."""
    return None if caller is None or caller.admin else caller.name


def get_job(job_id: str, service: JobService = Depends(get_service),
            caller: ApiKey | None = Depends(require_api_key)) -> JobRecord:
    """The job named in the path; 404 for anything that is not the id of a job here, or is another
    key's job (it does not exist for this caller, so its existence is not given away either)."""
    try:
        canonical = str(uuid.UUID(job_id))
    except ValueError:
        canonical = None
    job = service.store.get(canonical) if canonical == job_id else None
    owner = visible_owner(caller)
    if job is None or (owner is not None and job.owner != owner):
        raise ApiError(404, f"no job {job_id[:64]!r}", type_=NO_SUCH_JOB)
    return job


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def status_info(job: JobRecord, request: Request) -> StatusInfo:
    base = base_url(request)
    links = [Link(href=f"{base}/jobs/{job.id}", rel="self", type="application/json", title="this job's status")]
    if job.status == "successful" and not job.expired:
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
    return StatusInfo(jobID=job.id, status=job.status, message=job.message, scene=scene_label(job),
                      created=job.created, started=job.started, finished=job.finished, updated=job.updated,
                      progress=min(100, progress), links=links,
                      windows=WindowProgress(done=done, total=total) if total else None, timings=timings,
                      detections=job.detections, format=job.options.get("format"), notes=job.notes or None,
                      owner=job.owner, expired=job.expired)
