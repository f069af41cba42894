"""Health, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from serving.api.deps import require_api_key

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    ready: bool
    checks: dict[str, bool]


@router.get("/healthz", response_model=Health, summary="The process is alive")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Ready, summary="Model loaded, workers up, store writable",
            responses={503: {"model": Ready}})
def readyz(request: Request) -> JSONResponse:
    service = getattr(request.app.state, "service", None)
    checks = service.ready() if service is not None else {"model": False, "workers": False, "store": False}
    ready = all(checks.values())
    return JSONResponse(Ready(ready=ready, checks=checks).model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", dependencies=[Depends(require_api_key)],
            response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(request: Request) -> Response:
    service = request.app.state.service
    service.metrics.refresh()
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
