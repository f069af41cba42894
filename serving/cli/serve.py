"""``hbdnet serve``: the job service over HTTP (FastAPI on uvicorn); see ``serving.api``."""

from __future__ import annotations

import argparse
import os

from serving.cli.arguments import resolve_model
from serving.cli.errors import CliError


def run(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from serving.api.app import create_app
    from serving.api.keys import KeysFileError, server_keys
    from serving.api.service import JobService
    from serving.api.settings import API_KEY_ENV, Settings
    from serving.api.web import check_origin
    from serving.api.webpage import check_basemap

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    # A bad keys file, origin or --model fails here, before the data folder is made or the server listens.
    try:
        server_keys(api_key, args.keys_file)
        origins = [check_origin(o) for o in args.cors_origin]
        basemap = check_basemap(args.basemap) if args.basemap else None
    except (KeysFileError, ValueError) as exc:
        raise CliError(str(exc)) from None
    model = resolve_model(args.model, args.device, args.precision, args.runtime)
    extra = {} if args.max_pixels is None else {"max_pixels": args.max_pixels}
    settings = Settings(data_dir=args.data_dir.resolve(), model=args.model, device=args.device,
                        precision=args.precision, runtime=args.runtime, workers=args.workers,
                        read_threads=args.read_threads, ray_address=args.ray_address,
                        api_key=api_key, keys_file=args.keys_file, cors_origins=origins,
                        basemap=basemap, basemap_attribution=args.basemap_attribution, store=args.store,
                        takeover_s=args.takeover_after,
                        keep_results_s=args.keep_results, max_data_bytes=args.max_data,
                        max_upload_bytes=args.max_upload, max_queue=args.max_queue, job_timeout_s=args.job_timeout,
                        sync_max_pixels=args.sync_max_pixels, allow_private_hrefs=args.allow_private_hrefs,
                        allow_href_hosts=args.allow_href_hosts, http_timeout_s=args.http_timeout,
                        max_checking=args.max_checking, max_windows=args.max_windows,
                        max_job_seconds=args.max_job_seconds, seconds_per_window=args.seconds_per_window, **extra)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create the data folder {settings.data_dir}: {exc.strerror or exc}") from exc
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from serving.api.postgres_store import StoreError

    try:
        service = JobService(settings, model)
    except StoreError as exc:
        raise CliError(str(exc)) from None
    app = create_app(settings, service)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=30)
    return 0
