"""Accepting a job: the checks every submission passes before its 202 (queue, options, the scene
opened as a raster), shared by ``POST /jobs`` and the OGC execution."""

from __future__ import annotations

import shutil

from fastapi import Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from serving.api import ingest
from serving.api.errors import ApiError, validation_detail
from serving.api.models import JobHrefRequest, JobOptions
from serving.api.service import JobService, QueueFull
from serving.api.store import JobRecord
from serving.engine.scene import SceneError, SceneInfo

MAX_JSON_BYTES = 64 * 1024


def queue_full(service: JobService) -> ApiError:
    return ApiError(429, f"{service.settings.max_queue} jobs are already waiting; try again later",
                    headers={"Retry-After": str(service.settings.retry_after_s)})


def check_queue(service: JobService) -> None:
    try:
        service.check_queue()
    except QueueFull:
        raise queue_full(service) from None


def check_model(options: JobOptions, service: JobService) -> None:
    if options.model is not None and options.model not in (service.model.name, service.model.label):
        raise ApiError(422, f"this server runs model {service.model.name!r} ({service.model.label}), "
                            f"not {options.model!r}")


def parse(model: type[JobOptions], data: dict) -> JobOptions:
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


async def accept_href(service: JobService, options: JobHrefRequest, *, sync: bool = False) -> tuple[JobRecord, SceneInfo]:
    check_queue(service)
    check_model(options, service)
    info = await check_scene(options.href, options, service, options.href)
    return _submit(service, service.new_id(), options.href, options, sync=sync), info


async def accept_request(request: Request, service: JobService) -> JobRecord:
    """``POST /jobs``: a JSON body with an href, or the scene itself (multipart or raw body)."""
    check_queue(service)  # before reading a byte of the upload
    ctype = request.headers.get("content-type", "")
    query = {k: v for k, v in request.query_params.items()}
    if ctype.startswith("application/json"):
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise ApiError(422, 'send a JSON object like {"href": "https://example.com/scene.tif"}')
        options = parse(JobHrefRequest, {**form_options(query), **body})
        job, _ = await accept_href(service, options)  # type: ignore[arg-type]
        return job
    job_id = service.new_id()
    folder = service.job_dir(job_id)
    try:
        upload = await ingest.receive(request, service.input_path(job_id), service.settings.max_upload_bytes)
        if upload.size == 0:
            raise ApiError(422, f"the file {upload.filename!r} is empty")
        options = parse(JobOptions, form_options({**query, **upload.fields}))
        check_model(options, service)
        await check_scene(str(upload.path), options, service, upload.filename)
        return _submit(service, job_id, "upload", options, extra={"filename": upload.filename})
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _submit(service: JobService, job_id: str, source: str, options: JobOptions, *, sync: bool = False,
            extra: dict | None = None) -> JobRecord:
    data = options.model_dump(exclude={"href"})
    data.update(extra or {})
    try:
        return service.submit(job_id, source, data, sync=sync)
    except QueueFull:
        raise queue_full(service) from None


async def _json_body(request: Request):
    import json

    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_JSON_BYTES:
            raise ApiError(413, f"JSON body larger than {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ApiError(422, f"the body is not JSON: {exc}") from None
