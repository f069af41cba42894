"""``hbdnet serve``: the job service over HTTP (FastAPI on uvicorn); see ``serving.api``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from hbdnet.commands import CliError
from hbdnet.commands.arguments import one_line_errors, positive_number, whole_number
from serving.cli.detect import _device, _precision


def _size(text: str) -> int:
    """Bytes from ``4G``, ``512M``, ``100k`` or a number."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        n = int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"a size like 4G, 512M or 1000000, got {text!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return n


def add_parser(sub: argparse._SubParsersAction) -> None:
    from serving.api.settings import API_KEY_ENV, API_KEY_HEADER

    p = sub.add_parser(
        "serve", help="run the job service: POST a GeoTIFF, get the bridges back",
        description="Run the HTTP job service (OpenAPI docs at /docs; OGC API - Processes at /). The model is "
                    "loaded once and the workers stay up between jobs; jobs and results persist in --data-dir.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=whole_number("port", 0), default=8000, help="port (default 8000)")
    p.add_argument("--model", metavar="NAME|PATH", help="hbdnet checkpoint file, or the name of a bundled model")
    p.add_argument("--device", type=_device, default="auto", help="cpu, cuda or cuda:N (default auto)")
    p.add_argument("--precision", type=_precision, default="auto", metavar="P",
                   help="auto, float32 or bfloat16 (default auto: bfloat16 on a GPU that has it, else float32)")
    p.add_argument("--data-dir", type=Path, default=Path("hbdnet-data"), metavar="DIR",
                   help="job database, uploads and results (default ./hbdnet-data)")
    p.add_argument("--workers", type=whole_number("workers", 0), default=None, metavar="N",
                   help="0 runs the model in the server process without Ray; N starts N Ray workers "
                        "(default: as hbdnet detect, Ray only where it pays)")
    p.add_argument("--read-threads", type=whole_number("read threads", 1), default=None, metavar="N",
                   help="threads reading windows ahead in each worker (default 2 beside a CPU model, more beside "
                        "a GPU)")
    p.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster ('auto' or host:port)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help=f"require this key in the {API_KEY_HEADER} header on every route but /healthz and /readyz "
                        f"(default: ${API_KEY_ENV}; unset: no key)")
    p.add_argument("--max-upload", type=_size, default=4 * 2**30, metavar="SIZE",
                   help="largest upload, e.g. 4G (default); larger ones get 413")
    p.add_argument("--max-pixels", type=whole_number("max pixels", 1), default=None, metavar="N",
                   help="largest scene in pixels (default 2,000,000,000); larger ones get 422")
    p.add_argument("--max-queue", type=whole_number("max queue", 1), default=64, metavar="N",
                   help="jobs waiting to run; more get 429 (default 64)")
    p.add_argument("--job-timeout", type=positive_number("job timeout", "seconds"), default=6 * 3600.0, metavar="S",
                   help="a job running longer than S seconds is stopped and failed (default 21600)")
    p.add_argument("--sync-max-pixels", type=whole_number("sync max pixels", 0), default=25_000_000, metavar="N",
                   help="largest scene a synchronous OGC execution waits for (default 25,000,000)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
    p.set_defaults(run=run)
    one_line_errors(p)


def run(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from serving.api.app import create_app
    from serving.api.service import JobService
    from serving.api.settings import API_KEY_ENV, Settings
    from serving.cli.detect import resolve_model

    extra = {} if args.max_pixels is None else {"max_pixels": args.max_pixels}
    settings = Settings(data_dir=args.data_dir.resolve(), model=args.model, device=args.device,
                        precision=args.precision, workers=args.workers,
                        read_threads=args.read_threads, ray_address=args.ray_address,
                        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
                        max_upload_bytes=args.max_upload, max_queue=args.max_queue, job_timeout_s=args.job_timeout,
                        sync_max_pixels=args.sync_max_pixels, **extra)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create the data folder {settings.data_dir}: {exc.strerror or exc}") from exc
    # A bad --model fails here, before the server listens.
    model = resolve_model(args.model, args.device, args.precision)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings, JobService(settings, model))
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=30)
    return 0
