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
    from serving.api.service import JobService
    from serving.api.settings import API_KEY_ENV, Settings

    # A bad --model fails here, before the data folder is made or the server listens.
    model = resolve_model(args.model, args.device, args.precision, args.runtime)
    extra = {} if args.max_pixels is None else {"max_pixels": args.max_pixels}
    settings = Settings(data_dir=args.data_dir.resolve(), model=args.model, device=args.device,
                        precision=args.precision, runtime=args.runtime, workers=args.workers,
                        read_threads=args.read_threads, ray_address=args.ray_address,
                        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
                        max_upload_bytes=args.max_upload, max_queue=args.max_queue, job_timeout_s=args.job_timeout,
                        sync_max_pixels=args.sync_max_pixels, **extra)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create the data folder {settings.data_dir}: {exc.strerror or exc}") from exc
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings, JobService(settings, model))
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=30)
    return 0
