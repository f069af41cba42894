"""OGC API - Processes - Part 1: Core for one process, ``detect-bridges``: landing page, conformance,
process list and description, execution (async with ``Prefer: respond-async``, sync for small scenes).
The job routes are ``serving.api.routers.jobs`` (their documents are OGC ``statusInfo``)."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import FileResponse, JSONResponse

from serving.api import submit
from serving.api.deps import base_url, get_service, require_api_key, status_info
from serving.api.errors import OGC_EXCEPTIONS, ApiError
from serving.api.models import (
    MEDIA_TYPES,
    PROCESS_ID,
    ConfClasses,
    Execute,
    InputDescription,
    JobHrefRequest,
    LandingPage,
    Link,
    OgcException,
    OutputDescription,
    Process,
    ProcessList,
    ProcessSummary,
    StatusInfo,
)
from serving.api.service import JobService
from serving.api.store import FINAL

router = APIRouter(tags=["OGC API - Processes"], dependencies=[Depends(require_api_key)])

CONFORMANCE = [f"http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/{c}"
               for c in ("core", "ogc-process-description", "json", "oas30", "job-list", "dismiss")]
REL = "http://www.opengis.net/def/rel/ogc/1.0/"
_FORMAT_BY_MEDIA = {v: k for k, v in MEDIA_TYPES.items() if k != "qml"}


def _summary(base: str) -> ProcessSummary:
    return ProcessSummary(
        id=PROCESS_ID, version="1.0.0", title="Detect bridges",
        description="Bridges in a satellite or aerial scene as oriented rectangles (HBD-Net): score, class, "
                    "length, width and bearing of each.",
        keywords=["bridges", "object detection", "remote sensing"],
        jobControlOptions=["async-execute", "sync-execute", "dismiss"], outputTransmission=["value"],
        links=[Link(href=f"{base}/processes/{PROCESS_ID}", rel="self", type="application/json"),
               Link(href=f"{base}/processes/{PROCESS_ID}/execution", rel=REL + "execute",
                    title="execute (POST)")])


@router.get("/", response_model=LandingPage, response_model_exclude_none=True, summary="Landing page")
def landing(request: Request, service: JobService = Depends(get_service)) -> LandingPage:
    base = base_url(request)
    return LandingPage(
        title="hbdnet: bridge detection",
        description=f"OGC API - Processes for bridge detection with model {service.model.label}",
        links=[Link(href=f"{base}/", rel="self", type="application/json", title="this document"),
               Link(href=f"{base}/openapi.json", rel="service-desc",
                    type="application/vnd.oai.openapi+json;version=3.0", title="the API definition"),
               Link(href=f"{base}/docs", rel="service-doc", type="text/html", title="the API documentation"),
               Link(href=f"{base}/conformance", rel=REL + "conformance", type="application/json",
                    title="conformance classes"),
               Link(href=f"{base}/processes", rel=REL + "processes", type="application/json", title="processes"),
               Link(href=f"{base}/jobs", rel=REL + "job-list", type="application/json", title="jobs")])


@router.get("/conformance", response_model=ConfClasses, summary="Conformance classes")
def conformance() -> ConfClasses:
    return ConfClasses(conformsTo=CONFORMANCE)


@router.get("/processes", response_model=ProcessList, response_model_exclude_none=True, summary="Processes")
def processes(request: Request) -> ProcessList:
    base = base_url(request)
    return ProcessList(processes=[_summary(base)],
                       links=[Link(href=f"{base}/processes", rel="self", type="application/json")])


@router.get(f"/processes/{PROCESS_ID}", response_model=Process, response_model_exclude_none=True,
            summary="The detect-bridges process")
def process(request: Request) -> Process:
    summary = _summary(base_url(request))
    return Process(
        **summary.model_dump(),
        inputs={
            "image": InputDescription(
                title="Scene", description="URL (http, https or s3) of a GeoTIFF or COG; upload files with POST /jobs",
                minOccurs=1, maxOccurs=1,
                schema={"type": "string", "format": "uri", "contentMediaType": "image/tiff; application=geotiff"}),
            "score_threshold": InputDescription(
                title="Score threshold", description="drop bridges scoring below this (default: the operating "
                "point stored with the model, else 0)", minOccurs=0, maxOccurs=1,
                schema={"type": "number", "minimum": 0, "maximum": 1}),
            "bands": InputDescription(
                title="Bands", description="1-based bands to use as R,G,B, or one band as grey", minOccurs=0,
                maxOccurs=1, schema={"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1,
                                     "maxItems": 3}),
        },
        outputs={"bridges": OutputDescription(
            title="Bridges", description="one oriented rectangle per bridge with its attributes",
            schema={"oneOf": [{"type": "object", "contentMediaType": MEDIA_TYPES["geojson"]},
                              {"type": "string", "contentEncoding": "binary", "contentMediaType": MEDIA_TYPES["gpkg"]},
                              {"type": "string", "contentEncoding": "binary", "contentMediaType": MEDIA_TYPES["fgb"]}]})},
    )


def _options(body: Execute) -> JobHrefRequest:
    inputs = dict(body.inputs)
    image = inputs.pop("image", None)
    href = image.get("href") if isinstance(image, dict) else image
    if not isinstance(href, str):
        raise ApiError(400, 'inputs.image must be {"href": URL} or a URL (http, https or s3)',
                       type_=OGC_EXCEPTIONS + "invalid-input")
    unknown = set(inputs) - {"score_threshold", "bands"}
    if unknown:
        raise ApiError(400, f"unknown inputs {sorted(unknown)}; the inputs are image, score_threshold, bands",
                       type_=OGC_EXCEPTIONS + "invalid-input")
    fmt = "geojson"
    out = (body.outputs or {}).get("bridges")
    if out is not None and out.format is not None and out.format.mediaType:
        fmt = _FORMAT_BY_MEDIA.get(out.format.mediaType.split(";")[0].strip())  # type: ignore[assignment]
        if fmt is None:
            raise ApiError(400, f"output format {out.format.mediaType!r} is not one of {sorted(_FORMAT_BY_MEDIA)}",
                           type_=OGC_EXCEPTIONS + "invalid-input")
    return submit.parse(JobHrefRequest, {"href": href, "format": fmt, **inputs})  # type: ignore[return-value]


@router.post(f"/processes/{PROCESS_ID}/execution", summary="Execute detect-bridges",
             responses={200: {"description": "the bridges (synchronous execution)",
                              "content": {t: {} for t in MEDIA_TYPES.values()}},
                        201: {"description": "accepted (asynchronous execution); Location names the job",
                              "model": StatusInfo},
                        **{c: {"model": OgcException} for c in (400, 401, 422, 429, 500)}})
async def execute(body: Execute, request: Request, prefer: str | None = Header(None),
                  service: JobService = Depends(get_service)):
    """Run the process on ``inputs.image`` (a URL). With ``Prefer: respond-async`` (or a scene larger than the
    server's synchronous limit) the answer is 201 with the job's status and ``Location``; otherwise the request
    waits for the job and answers the bridges."""
    options = _options(body)
    wants_async = prefer is not None and "respond-async" in prefer.lower()
    job, info = await submit.accept_href(service, options, sync=not wants_async)
    if wants_async or info.width * info.height > service.settings.sync_max_pixels:
        headers = {"Location": f"{base_url(request)}/jobs/{job.id}"}
        if wants_async:
            headers["Preference-Applied"] = "respond-async"
        return JSONResponse(status_info(job, request).model_dump(mode="json", exclude_none=True), status_code=201,
                            headers=headers)
    deadline = time.monotonic() + service.settings.job_timeout_s + 60
    while time.monotonic() < deadline:
        current = service.store.get(job.id)
        if current is not None and current.status in FINAL:
            break
        await asyncio.sleep(0.1)
    if current is None or current.status != "successful":
        reason = current.message if current is not None else "the job disappeared"
        raise ApiError(500, f"job {job.id} did not succeed: {reason}")
    fmt = options.format
    return FileResponse(service.result_path(job.id, fmt), media_type=MEDIA_TYPES[fmt],
                        headers={"Link": f'<{base_url(request)}/jobs/{job.id}>; rel="monitor"'})
