"""The FastAPI application of ``hbdnet serve``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from serving.api import errors, web, webpage
from serving.api.keys import server_keys
from serving.api.routers import docs, jobs, ops, processes
from serving.api.service import JobService
from serving.api.settings import Settings

log = logging.getLogger("hbdnet.serve")


def create_app(settings: Settings, service: JobService | None = None) -> FastAPI:
    """The app. Without ``service``, the model named by ``settings.model`` is resolved (as ``hbdnet detect``
    does) and the job service started when the app starts; either way it is stopped when the app stops.
    Raises ``serving.api.keys.KeysFileError`` for a keys file it cannot use."""
    keys = server_keys(settings.api_key, settings.keys_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = service
        if svc is None:
            from serving.model_ref import resolve_model

            svc = JobService(settings, resolve_model(settings.model, settings.device, settings.precision,
                                                     settings.runtime))
        svc.start()
        app.state.service = svc
        log.info("hbdnet serve: model %s, data in %s", svc.model.label, settings.data_dir)
        if keys:  # the names, never the keys
            log.info("API keys: %s", ", ".join(k.name + (" (admin)" if k.admin else "") for k in keys))
        try:
            yield
        finally:
            app.state.service = None
            svc.stop()

    # docs_url, openapi_url None: serving.api.routers.docs serves both, behind the key, with local assets
    app = FastAPI(title="hbdnet", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None,
                  description="Bridge detection in satellite and aerial scenes: POST a GeoTIFF, poll the job, fetch "
                              "the bridges (GeoJSON, GeoPackage, FlatGeobuf). Also OGC API - Processes - Part 1: Core "
                              "for the process `detect-bridges`.")
    app.state.settings = settings
    app.state.service = None
    app.state.keys = keys
    errors.install(app)
    app.include_router(processes.landing_router)
    app.include_router(processes.router)
    app.include_router(jobs.router)
    app.include_router(ops.router)
    docs.install(app)
    webpage.install(app)
    web.install_cors(app, settings.cors_origins)
    return app
