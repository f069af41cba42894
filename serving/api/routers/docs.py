"""``/openapi.json`` and ``/docs`` (Swagger UI) behind the API key like every other route, the UI's
script, style and icon served by the app itself from the ``fastapi-offline`` package: FastAPI's own
``/docs`` loads them from a CDN, a blank page on an offline machine."""

from __future__ import annotations

import importlib.resources

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from serving.api.deps import require_api_key

ASSETS_URL = "/docs/assets"
# Swagger UI's own defaults that reach out: the validator badge calls validator.swagger.io.
_UI_PARAMETERS = {"validatorUrl": None}

router = APIRouter(include_in_schema=False, dependencies=[Depends(require_api_key)])


def assets_folder() -> str:
    """The folder of Swagger UI's files inside the installed ``fastapi-offline`` package."""
    return str(importlib.resources.files("fastapi_offline") / "static")


@router.get("/openapi.json")
def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
def docs(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title=f"{request.app.title} - API",
                               swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
                               swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
                               swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                               swagger_ui_parameters=_UI_PARAMETERS)


def install(app: FastAPI) -> None:
    """The two routes and the assets (public files of a public library: they need no key)."""
    app.include_router(router)
    app.mount(ASSETS_URL, StaticFiles(directory=assets_folder()), name="docs-assets")
