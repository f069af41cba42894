"""``/jobs``: submit a scene, follow the job, fetch its results, dismiss it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from serving.api import submit
from serving.api.deps import base_url, get_job, get_service, owner_of, require_api_key, status_info, visible_owner
from serving.api.errors import OGC_EXCEPTIONS, ApiError
from serving.api.keys import ApiKey
from serving.api.models import (
    MEDIA_TYPES,
    JobHrefRequest,
    JobList,
    JobOptions,
    Link,
    OgcException,
    Quicklook,
    StatusInfo,
)
from serving.api.ogc_results import OutputChoice, answer
from serving.api.service import JobService
from serving.api.store import JobRecord
from serving.outputs.formats import OutputFormat
from serving.outputs.quicklook import read_bounds

router = APIRouter(tags=["jobs"], dependencies=[Depends(require_api_key)])

_ERRORS = {code: {"model": OgcException} for code in (401, 404, 413, 415, 422, 429, 507)}
_UPLOAD_FORM = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "the scene: a GeoTIFF (or PNG, JPEG, JPEG 2000)"},
        **{k: v for k, v in JobOptions.model_json_schema()["properties"].items() if k != "bands"},
        "bands": {"type": "string", "description": "1-based bands as R,G,B, e.g. 3,2,1 (or one band)",
                  "example": "1,2,3"},
    },
}
_POST_BODY = {
    "requestBody": {
        "required": True,
        "description": "The scene, streamed to disk as it arrives, or a URL the server reads it from. The options "
                       "may also be given as query parameters.",
        "content": {
            "multipart/form-data": {"schema": _UPLOAD_FORM},
            "application/json": {"schema": JobHrefRequest.model_json_schema(ref_template="#/components/schemas/{model}")},
            "image/tiff": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def _created(job: JobRecord, request: Request) -> JSONResponse:
    doc = status_info(job, request)
    return JSONResponse(doc.model_dump(mode="json", exclude_none=True), status_code=202,
                        headers={"Location": f"{base_url(request)}/jobs/{job.id}"})


@router.post("/jobs", status_code=202, response_model=StatusInfo, response_model_exclude_none=True,
             openapi_extra=_POST_BODY, summary="Submit a scene",
             responses={202: {"description": "accepted; Location names the job", "model": StatusInfo}, **_ERRORS})
async def create_job(request: Request, service: JobService = Depends(get_service),
                     caller: ApiKey | None = Depends(require_api_key)) -> JSONResponse:
    """Submit a scene for bridge detection: a file upload (``multipart/form-data`` with a ``file`` part, or
    the raw body as ``image/tiff``) or a JSON body ``{"href": "https://…"}``. The scene is opened before the
    job is accepted; answers 202 with the job's status and a ``Location`` header."""
    job = await submit.accept_request(request, service, owner=owner_of(caller))
    return _created(job, request)


@router.get("/jobs", response_model=JobList, response_model_exclude_none=True, summary="List jobs",
            responses={401: {"model": OgcException}})
def list_jobs(request: Request, limit: int = Query(20, ge=1, le=1000), offset: int = Query(0, ge=0),
              service: JobService = Depends(get_service), caller: ApiKey | None = Depends(require_api_key)) -> JobList:
    """Your jobs (an admin key: everyone's), newest first, ``limit`` per page; ``links`` has ``next`` and
    ``prev`` pages."""
    jobs, total = service.store.page(limit, offset, owner=visible_owner(caller))
    base = f"{base_url(request)}/jobs"
    links = [Link(href=f"{base}?limit={limit}&offset={offset}", rel="self", type="application/json")]
    if offset + limit < total:
        links.append(Link(href=f"{base}?limit={limit}&offset={offset + limit}", rel="next", type="application/json"))
    if offset > 0:
        links.append(Link(href=f"{base}?limit={limit}&offset={max(0, offset - limit)}", rel="prev",
                          type="application/json"))
    return JobList(jobs=[status_info(j, request) for j in jobs], links=links, numberMatched=total)


@router.get("/jobs/{job_id}", response_model=StatusInfo, response_model_exclude_none=True, summary="A job's status",
            responses={401: {"model": OgcException}, 404: {"model": OgcException}})
def get_status(request: Request, job: JobRecord = Depends(get_job)) -> StatusInfo:
    """Status, progress (windows done of total, percent), timings, the reason of a failure, links to results."""
    return status_info(job, request)


@router.get("/jobs/{job_id}/results", summary="A successful job's bridges",
            responses={200: {"description": "the bridges (a results document for a job of an OGC execution "
                                             "with response document)",
                             "content": {t: {} for t in (*MEDIA_TYPES.values(), "application/json")}},
                       401: {"model": OgcException}, 404: {"model": OgcException},
                       410: {"model": OgcException, "description": "the results were deleted (--keep-results)"}})
def get_results(request: Request, job: JobRecord = Depends(get_job), f: OutputFormat | Literal["qml"] | None = Query(
        None, description="geojson (default: the job's format), gpkg (QGIS style inside), fgb, or qml (the "
                          "QGIS style for the fgb)"), service: JobService = Depends(get_service)) -> Response:
    """The bridges as a file; without ``f``, a job made by an OGC execute request answers as that request
    asked (``response`` raw or document, ``serving.api.ogc_results``)."""
    fmt = f or job.options.get("format", "geojson")
    _check_finished(job)
    path = service.result_path(job.id, fmt)
    if not path.is_file():
        reason = " (the scene has no CRS, and GeoJSON is WGS84: ask for f=gpkg or f=fgb)" if fmt == "geojson" else ""
        raise ApiError(404, f"job {job.id} has no {fmt} result{reason}")
    choice = OutputChoice.of_job(job)
    if f is None and choice is not None:
        return answer(job, choice, service, base_url(request))
    return FileResponse(path, media_type=MEDIA_TYPES[fmt], filename=f"{_stem(job)}_bridges.{fmt}")


@router.get("/jobs/{job_id}/quicklook", response_model=Quicklook, summary="A finished job's scene, for a map",
            responses={401: {"model": OgcException}, 404: {"model": OgcException}, 410: {"model": OgcException}})
def get_quicklook(request: Request, job: JobRecord = Depends(get_job),
                  service: JobService = Depends(get_service)) -> Quicklook:
    """Where the scene's quicklook lies (``bbox`` in degrees, WGS84; the picture is in Web Mercator, so it
    spans the bbox exactly on a Web Mercator map) and its link; 404 for a scene without a CRS."""
    path = _quicklook_file(job, service)
    b = read_bounds(path)
    return Quicklook(bbox=[b.west, b.south, b.east, b.north], width=b.width, height=b.height,
                     href=f"{base_url(request)}/jobs/{job.id}/quicklook.png")


@router.get("/jobs/{job_id}/quicklook.png", summary="A finished job's scene as a picture (PNG, Web Mercator)",
            response_class=FileResponse, responses={200: {"content": {"image/png": {}}},
                                                    401: {"model": OgcException}, 404: {"model": OgcException},
                                                    410: {"model": OgcException}})
def get_quicklook_png(job: JobRecord = Depends(get_job), service: JobService = Depends(get_service)) -> FileResponse:
    return FileResponse(_quicklook_file(job, service), media_type="image/png")


def _quicklook_file(job: JobRecord, service: JobService) -> Path:
    _check_finished(job)
    path = service.quicklook_path(job.id)
    if not path.is_file():
        raise ApiError(404, f"job {job.id} has no quicklook: the scene has no CRS, so it has no place on a map")
    return path


@router.delete("/jobs/{job_id}", response_model=StatusInfo, response_model_exclude_none=True, summary="Dismiss a job",
               responses={401: {"model": OgcException}, 404: {"model": OgcException}})
def dismiss_job(request: Request, job: JobRecord = Depends(get_job), service: JobService = Depends(get_service),
                caller: ApiKey | None = Depends(require_api_key)) -> StatusInfo:
    """A queued job never starts, a running one stops (no further window is computed), and the job's files
    are deleted. The job stays listed as ``dismissed``."""
    done = service.dismiss(job.id, by=owner_of(caller))
    assert done is not None
    return status_info(done, request)


def _check_finished(job: JobRecord) -> None:
    """404 for a job that has not succeeded, 410 for one whose files were deleted."""
    if job.status != "successful":
        what = {"accepted": "is waiting to run", "running": "is running", "dismissed": "was dismissed",
                "failed": f"failed: {job.message}"}[job.status]
        raise ApiError(404, f"job {job.id} has no results: it {what}", type_=OGC_EXCEPTIONS + "result-not-ready")
    if job.expired:
        raise ApiError(410, f"job {job.id} has no results any more: {job.message} (deleted at {job.expired}); "
                            "submit the scene again")


def _stem(job: JobRecord) -> str:
    """A safe file name stem from the scene's name (a label, never a path here)."""
    name = job.options.get("filename") or urlsplit(job.source).path.rstrip("/").rsplit("/", 1)[-1] or "scene"
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:80] or "scene"
