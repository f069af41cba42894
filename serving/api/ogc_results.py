"""A ``detect-bridges`` execution's results as OGC API - Processes 1.0 Core gives them, chosen by the execute
request and answered the same way synchronously (``POST .../execution``) and asynchronously
(``GET /jobs/{id}/results`` of a job made by it):

- ``response: "raw"`` (the standard's default): the output itself, in the media type asked for; by
  ``transmissionMode: "reference"``, 204 with the output's URL in a ``Link`` header.
- ``response: "document"``: a JSON results document ``{"bridges": ...}``, the output by value (GeoJSON as
  the FeatureCollection, GeoPackage and FlatGeobuf base64, each with its ``mediaType``) or by reference
  (a link to ``/jobs/{id}/results?f=...``). A value larger than ``MAX_INLINE_RESULT`` is given by
  reference, so that no answer holds a large file in memory.

The choice travels with the job in its options (``response``, ``transmission``), so that a job's results
keep the form its execute request asked for; jobs from ``POST /jobs`` have none and get the file.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Literal

from fastapi.responses import FileResponse, JSONResponse, Response

from serving.api.errors import ApiError
from serving.api.models import MEDIA_TYPES, OutputRequest
from serving.api.service import JobService
from serving.api.store import JobRecord

OUTPUT_ID = "bridges"
RESULTS_REL = "http://www.opengis.net/def/rel/ogc/1.0/results"
MAX_INLINE_RESULT = 32 * 2**20  # bytes of a result file given by value in a results document
_FORMAT_BY_MEDIA = {v: k for k, v in MEDIA_TYPES.items() if k != "qml"}


@dataclass(frozen=True)
class OutputChoice:
    """What an execute request asked of its one output."""

    format: str = "geojson"  # an OUTPUT_FORMATS name
    response: Literal["raw", "document"] = "raw"
    transmission: Literal["value", "reference"] = "value"

    def job_options(self) -> dict[str, str]:
        """What the job records besides ``format`` (a JobOptions field already)."""
        return {"response": self.response, "transmission": self.transmission}

    @classmethod
    def of_job(cls, job: JobRecord) -> OutputChoice | None:
        """The choice of the execute request that made ``job``; None for a ``POST /jobs`` job."""
        opts = job.options
        if "response" not in opts:
            return None
        return cls(opts.get("format", "geojson"), opts["response"], opts.get("transmission", "value"))


def choose(outputs: dict[str, OutputRequest] | None, response: str | None) -> OutputChoice:
    """The execute request's ``outputs`` and ``response`` as an OutputChoice; ApiError 422 (400 on the OGC
    route) for an output other than ``bridges`` or a media type the service does not write."""
    outputs = outputs or {}
    unknown = sorted(set(outputs) - {OUTPUT_ID})
    if unknown:
        raise ApiError(422, f"unknown outputs {unknown}; the process has one output, {OUTPUT_ID!r}")
    out = outputs.get(OUTPUT_ID) or OutputRequest()
    fmt = "geojson"
    if out.format is not None and out.format.mediaType:
        media = out.format.mediaType.split(";")[0].strip().lower()
        if media not in _FORMAT_BY_MEDIA:
            raise ApiError(422, f"output format {out.format.mediaType!r} is not one of {sorted(_FORMAT_BY_MEDIA)}")
        fmt = _FORMAT_BY_MEDIA[media]
    return OutputChoice(fmt, response or "raw", out.transmissionMode or "value")


def answer(job: JobRecord, choice: OutputChoice, service: JobService, base: str,
           headers: dict[str, str] | None = None) -> Response:
    """The successful ``job``'s output as ``choice`` asks (see the module), ``headers`` added."""
    fmt, media = choice.format, MEDIA_TYPES[choice.format]
    path = service.result_path(job.id, fmt)
    if not path.is_file():
        raise ApiError(404, f"job {job.id} has no {fmt} result")
    href = f"{base}/jobs/{job.id}/results?f={fmt}"
    headers = dict(headers or {})
    if choice.response == "raw":
        if choice.transmission == "reference":
            link = f'<{href}>; rel="{RESULTS_REL}"; type="{media}"'
            headers["Link"] = f"{headers['Link']}, {link}" if "Link" in headers else link
            return Response(status_code=204, headers=headers)
        return FileResponse(path, media_type=media, headers=headers)
    if choice.transmission == "reference" or path.stat().st_size > MAX_INLINE_RESULT:
        output: dict = {"href": href, "rel": RESULTS_REL, "type": media, "title": f"the bridges ({fmt})"}
    elif fmt == "geojson":
        output = {"value": json.loads(path.read_bytes()), "mediaType": media}
    else:
        output = {"value": base64.b64encode(path.read_bytes()).decode("ascii"), "mediaType": media,
                  "encoding": "base64"}
    return JSONResponse({OUTPUT_ID: output}, headers=headers)
