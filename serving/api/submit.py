"""Accepting a job: the checks every submission passes before its 202 (queue, options, the scene
opened as a raster), shared by ``POST /jobs`` and the OGC execution."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from serving.api import ingest
from serving.api.errors import ApiError, validation_detail
from serving.api.href_policy import HrefRefused, check_href_host
from serving.api.job_cost import Cost, TooCostly, check_cost, job_cost
from serving.api.models import JobHrefRequest, JobOptions
from serving.api.scene_checks import ChecksBusy
from serving.api.service import DataFull, JobService, QueueFull
from serving.api.store import JobRecord
from serving.engine.aoi import AoiError, aoi_from_value
from serving.engine.scene import SceneError, SceneInfo, public_href
from serving.resolution import plan_resolution

MAX_JSON_BYTES = 64 * 1024


def queue_full(service: JobService) -> ApiError:
    return ApiError(429, f"{service.settings.max_queue} jobs are already waiting; try again later",
                    headers={"Retry-After": str(service.settings.retry_after_s)})


def check_queue(service: JobService) -> None:
    try:
        service.check_queue()
    except QueueFull:
        raise queue_full(service) from None


def data_room(service: JobService) -> int | None:
    """Bytes the data folder may still grow by (None: no cap); 507 when it is full. A refusal deletes
    nothing already stored: old results go only by ``--keep-results`` or a client's DELETE."""
    try:
        return service.data_room()
    except DataFull:
        raise data_full(service) from None


def data_full(service: JobService) -> ApiError:
    return ApiError(507, f"the server's data folder is full (its limit is {service.settings.max_data_bytes:,} "
                         "bytes): no new job until older results are deleted; try again later or ask the operator",
                    headers={"Retry-After": str(service.settings.retry_after_s)})


def check_model(options: JobOptions, service: JobService) -> None:
    if options.model is not None and options.model not in (service.model.name, service.model.label):
        raise ApiError(422, f"this server runs model {service.model.name!r} ({service.model.label}), "
                            f"not {options.model!r}")


def parse(model: type[BaseModel], data: object) -> Any:
    """``data`` as ``model``, or 422 with pydantic's reasons in one line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, validation_detail(exc.errors(include_url=False))) from None


def form_options(fields: dict[str, str]) -> dict:
    """Form fields and query parameters as ``JobOptions`` input (``bands`` as ``1,2,3``)."""
    data: dict = dict(fields)
    if "bands" in data:
        text = data["bands"].strip()
        try:
            data["bands"] = [int(b) for b in text.split(",")] if text else None
        except ValueError:
            raise ApiError(422, f"bands must be 1-based band numbers like 1,2,3, got {text[:40]!r}") from None
    if "score_thr" in data and "score_threshold" not in data:
        data["score_threshold"] = data.pop("score_thr")
    return data


async def check_scene(uri: str, options: JobOptions, service: JobService, label: str) -> SceneInfo:
    try:
        return await run_in_threadpool(ingest.check_scene, uri, bands=options.bands, fmt=options.format,
                                       max_pixels=service.settings.max_pixels, label=label)
    except SceneError as exc:
        raise ApiError(422, str(exc)) from None


async def accept_href(service: JobService, options: JobHrefRequest, *, sync: bool = False,
                      owner: str | None = None, extra: dict | None = None) -> tuple[JobRecord, SceneInfo]:
    check_queue(service)
    data_room(service)
    check_model(options, service)
    info = await check_href(options, service)
    cost = price(service, info, options)
    job = _submit(service, service.new_id(), options.href, options, sync=sync, owner=owner, cost=cost, extra=extra)
    return job, info


async def check_href(options: JobHrefRequest, service: JobService) -> SceneInfo:
    """The href's host allowed (``href_policy``, before any request), then the scene opened as a job
    will open it: on the service's own bounded pool, 429 when it is full (``scene_checks``)."""
    href = options.href

    def check() -> SceneInfo:
        check_href_host(href, service.href_policy)
        return ingest.check_scene(href, bands=options.bands, fmt=options.format,
                                  max_pixels=service.settings.max_pixels, label=public_href(href))

    try:
        return await service.scene_checks.run(check)
    except ChecksBusy:
        raise ApiError(429, f"{service.scene_checks.limit} submitted scenes are being opened already; try again "
                            "later", headers={"Retry-After": str(service.settings.retry_after_s)}) from None
    except (HrefRefused, SceneError) as exc:
        raise ApiError(422, str(exc)) from None


async def accept_request(request: Request, service: JobService, *, owner: str | None = None) -> JobRecord:
    """``POST /jobs``: a JSON body with an href, or the scene itself (multipart or raw body), recorded as
    ``owner``'s job."""
    check_queue(service)  # before reading a byte of the upload
    ctype = request.headers.get("content-type", "")
    query = {k: v for k, v in request.query_params.items()}
    if ctype.startswith("application/json"):
        body = await json_body(request)
        if not isinstance(body, dict):
            raise ApiError(422, 'send a JSON object like {"href": "https://example.com/scene.tif"}')
        options = parse(JobHrefRequest, {**form_options(query), **body})
        job, _ = await accept_href(service, options, owner=owner)  # type: ignore[arg-type]
        return job
    cap = service.settings.max_upload_bytes
    limit = file_limit(service, cap)
    job_id = service.new_id()
    try:
        with past_limit(service, limit, cap):
            upload = await ingest.receive(request, service.input_path(job_id), limit)
        options = parse(JobOptions, form_options({**query, **upload.fields}))
        job, _ = await accept_file(service, job_id, upload, options, owner=owner)
        return job
    except BaseException:
        shutil.rmtree(service.job_dir(job_id), ignore_errors=True)
        raise


async def accept_inline(service: JobService, data: bytes, options: JobOptions, *, sync: bool = False,
                        owner: str | None = None, extra: dict | None = None) -> tuple[JobRecord, SceneInfo]:
    """A scene sent inside the request (the OGC execution's base64 ``value``, decoded), stored as the job's
    input file exactly as an upload is, within ``inline_limit`` and the room left; then accepted as one."""
    check_queue(service)
    cap = inline_limit(service)
    limit = file_limit(service, cap)
    job_id = service.new_id()
    try:
        with past_limit(service, limit, cap):
            upload = await ingest.store(data, service.input_path(job_id), limit, INLINE_NAME)
        return await accept_file(service, job_id, upload, options, sync=sync, owner=owner, extra=extra)
    except BaseException:
        shutil.rmtree(service.job_dir(job_id), ignore_errors=True)
        raise


async def accept_file(service: JobService, job_id: str, upload: ingest.Upload, options: JobOptions, *,
                      sync: bool = False, owner: str | None = None,
                      extra: dict | None = None) -> tuple[JobRecord, SceneInfo]:
    """A scene stored as job ``job_id``'s input (uploaded or inline) checked as a job will open it, priced
    and recorded; the caller removes the job's folder when this raises."""
    if upload.size == 0:
        raise ApiError(422, f"the file {upload.filename!r} is empty")
    check_model(options, service)
    info = await check_scene(str(upload.path), options, service, upload.filename)
    job = _submit(service, job_id, "upload", options, sync=sync, extra={"filename": upload.filename, **(extra or {})},
                  owner=owner, cost=price(service, info, options))
    return job, info


INLINE_NAME = "inline.tif"  # an inline scene's label (the client gave it no name)


def inline_limit(service: JobService) -> int:
    """Bytes a scene sent inline may have (decoded): ``--max-inline``, never more than ``--max-upload``. The
    request holds it in memory (base64 in JSON), hence its own, smaller limit."""
    return min(service.settings.max_inline_bytes, service.settings.max_upload_bytes)


def file_limit(service: JobService, cap: int) -> int:
    """Bytes a scene sent to the server may have: ``cap``, or less when the data folder has less room
    (507 when it has none)."""
    room = data_room(service)
    return cap if room is None else min(room, cap)


@contextmanager
def past_limit(service: JobService, limit: int, cap: int) -> Iterator[None]:
    """A 413 past ``limit`` when the room left, not ``cap``, set it is the folder being full: 507."""
    try:
        yield
    except ApiError as exc:
        if exc.status == 413 and limit < cap:
            raise data_full(service) from None
        raise


def price(service: JobService, info: SceneInfo, options: JobOptions) -> Cost:
    """The job's windows (those meeting its area of interest) and estimated seconds on this server
    (``job_cost``); 422 with the numbers past ``--max-windows`` or ``--max-job-seconds``, and for an
    area of interest that does not overlap the scene."""
    try:
        aoi = aoi_from_value(options.aoi) if options.aoi else None
        area = aoi.in_pixels(info.crs, info.transform) if aoi is not None else None
        res = plan_resolution(info, service.model.gsd, gsd=options.gsd, resolution=options.resolution,
                              window=service.model.window, area_px=area)
        grid = res.regrid
        height, width = (grid.height, grid.width) if grid else (info.height, info.width)
        area_px = aoi.in_pixels(info.crs, grid.transform(info.transform)) if aoi is not None and grid else area
    except (AoiError, SceneError) as exc:
        raise ApiError(422, str(exc)) from None
    cost = job_cost(height, width, service.model.window, service.model.overlap, service.window_rate,
                    area_px=area_px, levels=res.levels)
    if cost.windows == 0:
        raise ApiError(422, "the area of interest does not overlap the scene: there is nothing to search")
    try:
        check_cost(cost, max_windows=service.settings.max_windows, max_seconds=service.settings.max_job_seconds)
    except TooCostly as exc:
        raise ApiError(422, str(exc)) from None
    return cost


def _submit(service: JobService, job_id: str, source: str, options: JobOptions, *, sync: bool = False,
            extra: dict | None = None, owner: str | None = None, cost: Cost | None = None) -> JobRecord:
    data = options.model_dump(exclude={"href"})
    data.update(extra or {})
    try:
        return service.submit(job_id, source, data, sync=sync, owner=owner, cost=cost)
    except QueueFull:
        raise queue_full(service) from None


async def json_body(request: Request, limit: int = MAX_JSON_BYTES, too_large: str | None = None):
    """The request's JSON, read up to ``limit`` bytes (413 past it, ``too_large`` saying why, before a
    byte is read when Content-Length says so); 422 when it is not JSON."""
    message = too_large or f"JSON body larger than {limit:,} bytes"
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, message)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise ApiError(413, message)
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ApiError(422, f"the body is not JSON: {exc}") from None
