"""OGC API - Processes - Part 1: Core for one process, ``detect-bridges``: landing page, conformance,
process list and description, execution (async with ``Prefer: respond-async``, sync for small scenes;
results raw or as a document, ``serving.api.ogc_results``), 404 ``no-such-process`` for any other.
The job routes are ``serving.api.routers.jobs`` (their documents are OGC ``statusInfo``). An invalid
execute request is 400 (the rule in ``serving.api.errors``)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import time

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from serving.api import submit, webpage
from serving.api.deps import base_url, get_service, owner_of, require_api_key, require_api_key_unless_page, status_info
from serving.api.errors import NO_SUCH_PROCESS, ApiError, as_ogc
from serving.api.keys import ApiKey
from serving.api.models import (
    MEDIA_TYPES,
    PROCESS_ID,
    ConfClasses,
    Execute,
    InputDescription,
    JobHrefRequest,
    JobOptions,
    LandingPage,
    Link,
    OgcException,
    OutputDescription,
    Process,
    ProcessList,
    ProcessSummary,
    StatusInfo,
)
from serving.api.ogc_results import answer, choose
from serving.api.service import JobService
from serving.api.store import FINAL, JobRecord

router = APIRouter(tags=["OGC API - Processes"], dependencies=[Depends(require_api_key)])
# The landing route answers a browser with the web page, which needs no key (it asks for one itself).
landing_router = APIRouter(tags=["OGC API - Processes"])

# No "oas30": the API definition FastAPI serves is OpenAPI 3.1, and Processes 1.0 has no class for it.
CONFORMANCE = [f"http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/{c}"
               for c in ("core", "ogc-process-description", "json", "job-list", "dismiss")]
REL = "http://www.opengis.net/def/rel/ogc/1.0/"
SCENE_MEDIA = "image/tiff"  # an inline scene's media type (parameters such as "; application=geotiff" allowed)


def _summary(base: str) -> ProcessSummary:
    return ProcessSummary(
        id=PROCESS_ID, version="1.0.0", title="Detect bridges",
        description="Bridges in a satellite or aerial scene as oriented rectangles (HBD-Net): score, class, "
                    "length, width and bearing of each.",
        keywords=["bridges", "object detection", "remote sensing"],
        jobControlOptions=["async-execute", "sync-execute", "dismiss"], outputTransmission=["value", "reference"],
        links=[Link(href=f"{base}/processes/{PROCESS_ID}", rel="self", type="application/json"),
               Link(href=f"{base}/processes/{PROCESS_ID}/execution", rel=REL + "execute",
                    title="execute (POST)")])


@landing_router.get("/", response_model=LandingPage, response_model_exclude_none=True,
                    summary="Landing page (the web page for a browser)",
                    responses={200: {"content": {"text/html": {}}}, 401: {"model": OgcException}},
                    dependencies=[Depends(require_api_key_unless_page)])
def landing(request: Request, service: JobService = Depends(get_service)) -> LandingPage | HTMLResponse:
    """The OGC landing document; for a browser (``text/html`` in Accept, or ``?f=html``) the web page."""
    if webpage.wants_html(request):
        return webpage.page(service, request.app.state.settings)
    base = base_url(request)
    return LandingPage(
        title="hbdnet: bridge detection",
        description=f"OGC API - Processes for bridge detection with model {service.model.label}",
        links=[Link(href=f"{base}/", rel="self", type="application/json", title="this document"),
               Link(href=f"{base}/openapi.json", rel="service-desc",
                    type=openapi_media_type(request.app.openapi_version),
                    title="the API definition"),
               Link(href=f"{base}/docs", rel="service-doc", type="text/html", title="the API documentation"),
               Link(href=f"{base}/conformance", rel=REL + "conformance", type="application/json",
                    title="conformance classes"),
               Link(href=f"{base}/processes", rel=REL + "processes", type="application/json", title="processes"),
               Link(href=f"{base}/jobs", rel=REL + "job-list", type="application/json", title="jobs")])


def openapi_media_type(version: str) -> str:
    """The media type of an OpenAPI document of ``version`` (``3.1.0``: ``...;version=3.1``)."""
    return "application/vnd.oai.openapi+json;version=" + ".".join(version.split(".")[:2])


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
                title="Scene", description="{\"href\": URL} (http, https or s3) of a GeoTIFF or COG, or a small "
                "GeoTIFF inline: {\"value\": base64, \"mediaType\": \"image/tiff\"} (up to the server's inline "
                "limit); upload larger files with POST /jobs", minOccurs=1, maxOccurs=1,
                schema={"type": "string", "contentEncoding": "binary",
                        "contentMediaType": "image/tiff; application=geotiff"}),
            "score_threshold": InputDescription(
                title="Score threshold", description="drop bridges scoring below this (default: the operating "
                "point stored with the model, else 0)", minOccurs=0, maxOccurs=1,
                schema={"type": "number", "minimum": 0, "maximum": 1}),
            "bands": InputDescription(
                title="Bands", description="1-based bands to use as R,G,B, or one band as grey", minOccurs=0,
                maxOccurs=1, schema={"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1,
                                     "maxItems": 3}),
            "aoi": InputDescription(
                title="Area of interest", description="search only this area: a bounding box (CRS84 unless its "
                "crs says otherwise), or a GeoJSON Polygon or MultiPolygon in WGS84; windows that do not meet it "
                "are not run, bridges whose centre lies outside it are dropped", minOccurs=0, maxOccurs=1,
                schema={"oneOf": [{"type": "object", "required": ["bbox"], "properties": {
                    "bbox": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
                    "crs": {"type": "string", "format": "uri"}}, "format": "ogc-bbox"},
                    {"type": "object", "required": ["type", "coordinates"], "format": "geojson-geometry"}]}),
            "gsd": InputDescription(
                title="Ground sample distance", description="the scene's metres a pixel (default: from its CRS "
                "and transform)", minOccurs=0, maxOccurs=1, schema={"type": "number", "exclusiveMinimum": 0}),
            "resolution": InputDescription(
                title="Resolution", description="metres a pixel of the finest pyramid level (default: the scene "
                "resampled into the range the model was made for; 'native': the scene's own pixels)", minOccurs=0,
                maxOccurs=1, schema={"oneOf": [{"type": "number", "exclusiveMinimum": 0}, {"const": "native"}]}),
        },
        outputs={"bridges": OutputDescription(
            title="Bridges", description="one oriented rectangle per bridge with its attributes",
            schema={"oneOf": [{"type": "object", "contentMediaType": MEDIA_TYPES["geojson"]},
                              {"type": "string", "contentEncoding": "binary", "contentMediaType": MEDIA_TYPES["gpkg"]},
                              {"type": "string", "contentEncoding": "binary",
                               "contentMediaType": MEDIA_TYPES["fgb"]}]})},
    )


def _inputs(body: Execute) -> tuple[str | bytes, dict]:
    """The scene (an href, or the bytes of an inline value) and the other inputs; 422 (400 here) for
    anything else."""
    inputs = dict(body.inputs)
    image = inputs.pop("image", None)
    unknown = set(inputs) - {"score_threshold", "bands", "aoi", "gsd", "resolution"}
    if unknown:
        raise ApiError(422, f"unknown inputs {sorted(unknown)}; the inputs are image, score_threshold, bands, aoi, "
                            "gsd, resolution")
    if isinstance(inputs.get("aoi"), dict) and "bbox" in inputs["aoi"]:
        inputs["aoi"] = _bbox_aoi(inputs["aoi"])
    if isinstance(image, str):
        return image, inputs
    if isinstance(image, dict) and isinstance(image.get("href"), str):
        return image["href"], inputs
    if isinstance(image, dict) and isinstance(image.get("value"), str):
        return _inline_scene(image), inputs
    raise ApiError(422, 'inputs.image must be {"href": URL} (http, https or s3), the URL, or a GeoTIFF inline '
                        '{"value": base64, "mediaType": "image/tiff"}')


def _bbox_aoi(value: dict) -> str:
    """An OGC bounding box input as ``minx,miny,maxx,maxy[,CRS]`` (CRS84, longitude first, by default)."""
    bbox, crs = value.get("bbox"), value.get("crs")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, int | float) for v in bbox):
        raise ApiError(422, "inputs.aoi.bbox must be [minx, miny, maxx, maxy]")
    if crs in (None, "http://www.opengis.net/def/crs/OGC/1.3/CRS84"):
        return ",".join(map(str, bbox))
    return ",".join(map(str, bbox)) + f",{crs}"


def _inline_scene(image: dict) -> bytes:
    """The bytes of an inline scene (OGC qualified value: base64 ``value``, ``mediaType`` image/tiff)."""
    media = str(image.get("mediaType") or SCENE_MEDIA)
    if media.split(";")[0].strip().lower() != SCENE_MEDIA:
        raise ApiError(422, f"inputs.image.mediaType must be {SCENE_MEDIA} for a scene inline, got {media[:80]!r}")
    if image.get("encoding") not in (None, "base64"):
        raise ApiError(422, f"inputs.image.encoding must be base64, got {str(image['encoding'])[:40]!r}")
    try:
        return base64.b64decode(image["value"], validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "inputs.image.value is not base64") from None


async def _read_execute(request: Request, service: JobService) -> Execute:
    """The execute request, read within the JSON limit plus room for a scene inline (base64: 4/3 of it)."""
    inline = submit.inline_limit(service)
    limit = submit.MAX_JSON_BYTES + (inline + 2) // 3 * 4
    data = await submit.json_body(request, limit, too_large=(
        f"execute request larger than {limit:,} bytes: a scene inline may have at most {inline:,} bytes "
        "(before base64); give larger scenes as an href, or upload them with POST /jobs"))
    return submit.parse(Execute, data)


@router.post(f"/processes/{PROCESS_ID}/execution", summary="Execute detect-bridges",
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": Execute.model_json_schema(ref_template="#/components/schemas/{model}")}}}},
             responses={200: {"description": "the bridges (synchronous execution): the file (response raw) or a "
                                             "results document (response document)",
                              "content": {t: {} for t in (*MEDIA_TYPES.values(), "application/json")}},
                        201: {"description": "accepted (asynchronous execution); Location names the job",
                              "model": StatusInfo},
                        204: {"description": "response raw, transmissionMode reference: the output's URL in Link"},
                        **{c: {"model": OgcException} for c in (400, 401, 413, 429, 500, 507)}})
async def execute(request: Request, prefer: str | None = Header(None), service: JobService = Depends(get_service),
                  caller: ApiKey | None = Depends(require_api_key)) -> Response:
    """Run the process on ``inputs.image`` (a URL, or a small GeoTIFF inline). With ``Prefer: respond-async``
    (or a scene larger than the server's synchronous limit) the answer is 201 with the job's status and
    ``Location``; otherwise the request waits for the job and answers its results as ``response`` and
    ``outputs.bridges`` (format, transmissionMode) ask. Invalid requests are 400."""
    try:
        return await _execute(request, prefer, service, caller)
    except ApiError as exc:
        raise as_ogc(exc) from None


async def _execute(request: Request, prefer: str | None, service: JobService, caller: ApiKey | None) -> Response:
    body = await _read_execute(request, service)
    scene, inputs = _inputs(body)
    choice = choose(body.outputs, body.response)
    wants_async = prefer is not None and "respond-async" in prefer.lower()
    sync, owner, extra = not wants_async, owner_of(caller), choice.job_options()
    if isinstance(scene, bytes):
        options = submit.parse(JobOptions, {**inputs, "format": choice.format})
        job, info = await submit.accept_inline(service, scene, options, sync=sync, owner=owner, extra=extra)
    else:
        href_options = submit.parse(JobHrefRequest, {**inputs, "href": scene, "format": choice.format})
        job, info = await submit.accept_href(service, href_options, sync=sync, owner=owner, extra=extra)
    base = base_url(request)
    if wants_async or info.width * info.height > service.settings.sync_max_pixels:
        headers = {"Location": f"{base}/jobs/{job.id}"}
        if wants_async:
            headers["Preference-Applied"] = "respond-async"
        return JSONResponse(status_info(job, request).model_dump(mode="json", exclude_none=True), status_code=201,
                            headers=headers)
    done = await _finished(service, job)
    return answer(done, choice, service, base, headers={"Link": f'<{base}/jobs/{job.id}>; rel="monitor"'})


async def _finished(service: JobService, job: JobRecord) -> JobRecord:
    """``job`` once it has succeeded (a synchronous execution waits for it); 500 with the reason otherwise."""
    deadline = time.monotonic() + service.settings.job_timeout_s + 60
    current = None
    while time.monotonic() < deadline:
        current = service.store.get(job.id)
        if current is not None and current.status in FINAL:
            break
        await asyncio.sleep(0.1)
    if current is None or current.status != "successful":
        reason = current.message if current is not None else "the job disappeared"
        raise ApiError(500, f"job {job.id} did not succeed: {reason}")
    return current


def _no_such_process(process_id: str) -> ApiError:
    return ApiError(404, f"no process {process_id[:64]!r}; this server has one process, {PROCESS_ID!r}",
                    type_=NO_SUCH_PROCESS)


@router.get("/processes/{process_id}", include_in_schema=False)
def unknown_process(process_id: str) -> None:
    raise _no_such_process(process_id)


@router.post("/processes/{process_id}/execution", include_in_schema=False)
def execute_unknown_process(process_id: str) -> None:
    raise _no_such_process(process_id)
