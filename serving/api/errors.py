"""Errors as OGC exception documents (RFC 7807: type, title, status, detail) for every 4xx/5xx.

The one rule for invalid input: a request the service cannot act on because of what it asks for (a
malformed body, an option out of range, an href that is not a URL or not allowed, a scene that is not
a raster the service reads, too large in pixels or too costly) is answered **422 on ``/jobs``** and
**400 on the OGC execution** (``POST /processes/{id}/execution``), with the same reason: OGC API -
Processes answers an invalid execute request with 400, and the jobs API keeps the 422 its clients and
FastAPI's own validation use. Every check raises 422 (``ApiError``); the OGC route turns it into 400
with ``as_ogc``, so no check decides the status for itself. Other statuses are the same on both: 401
(key), 404 (no such job or process), 413 (larger than the limit), 415, 429 (busy), 507 (disk full).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

OGC_EXCEPTIONS = "http://www.opengis.net/def/exceptions/ogcapi-processes-1/1.0/"
NO_SUCH_JOB = OGC_EXCEPTIONS + "no-such-job"
NO_SUCH_PROCESS = OGC_EXCEPTIONS + "no-such-process"
INVALID_INPUT = OGC_EXCEPTIONS + "invalid-input"
# A status without an OGC type names the HTTP status (RFC 7807 allows any URI; the standard names only a
# few, given where they apply: no-such-job, no-such-process, result-not-ready)
_TYPES: dict[int, str] = {}
_TITLES = {400: "Bad request", 401: "Unauthorized", 404: "Not found", 405: "Method not allowed",
           410: "Gone", 413: "Upload too large", 415: "Unsupported media type", 422: "Unprocessable input",
           429: "Too many jobs waiting", 500: "Internal error", 503: "Not ready", 507: "Insufficient storage"}


class ApiError(Exception):
    """An error answered as an OGC exception document. ``detail`` is one line for the user."""

    def __init__(self, status: int, detail: str, *, type_: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type_ or _TYPES.get(status, f"https://httpstatuses.io/{status}")
        self.headers = headers or {}


def as_ogc(exc: ApiError) -> ApiError:
    """``exc`` as the OGC execution answers it: an invalid input (422 on ``/jobs``) is 400 there, with
    the same reason (the rule above); any other status unchanged."""
    if exc.status != 422:
        return exc
    return ApiError(400, exc.detail, type_=INVALID_INPUT, headers=exc.headers)


def problem(status: int, detail: str, type_: str | None = None, headers: dict[str, str] | None = None,
            instance: str | None = None) -> JSONResponse:
    body = {"type": type_ or _TYPES.get(status, f"https://httpstatuses.io/{status}"),
            "title": _TITLES.get(status, "Error"), "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    return JSONResponse(body, status_code=status, headers=headers, media_type="application/problem+json")


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return problem(exc.status, exc.detail, exc.type, exc.headers, str(request.url.path))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None),
                       instance=str(request.url.path))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(422, validation_detail(exc.errors()), instance=str(request.url.path))


def validation_detail(errors: list) -> str:
    """pydantic's errors as one line: ``where: what; ...``."""
    parts = []
    for e in errors:
        where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query"))
        parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    return "; ".join(parts) or "invalid request"
