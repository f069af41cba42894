"""``hbdnet batch``: many scenes, one worker pool, one output per scene, a resumable manifest.

INPUTS are rasters, folders, list files and STAC files (see ``serving.batch.inputs``); outputs and the
manifest are described in ``serving.batch.runner``. Re-running the same command continues where a stopped
run left off; scenes that failed are retried only with ``--retry-failed``.

Exit codes: 0 every scene ok, 1 some scene failed (now or in an earlier run and not retried),
2 usage or setup errors (no scenes, unreadable inputs, model, output folder, pool start-up),
130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hbdnet.commands import CliError
from hbdnet.commands.arguments import one_line_errors
from serving.cli.detect import (add_run_arguments, check_device, max_pixels, pool_config, resolve_model,
                               show_progress)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch", help="detect bridges in many scenes (files, folders, lists, STAC), resumably",
        description="Detect bridges in many scenes through one worker pool. INPUTS: raster files or "
                    "URLs; folders (searched recursively for .tif .tiff .vrt .jp2 .img); list files "
                    "(.txt/.list: one path or URL per line, # comments); STAC Items, Catalogs, "
                    "Collections or ItemCollections (.json). One output per scene in OUTDIR and a "
                    "manifest OUTDIR/manifest.jsonl; re-running skips scenes done with the same model "
                    "and settings. Exit codes: 0 all ok, 1 some scene failed, 2 usage or setup error.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="raster, folder, list file or STAC JSON")
    p.add_argument("-o", "--output-dir", dest="outdir", required=True, metavar="OUTDIR",
                   help="folder for the outputs and manifest.jsonl (created if missing)")
    p.add_argument("--format", choices=("gpkg", "geojson", "fgb"), default="gpkg",
                   help="output format (default gpkg)")
    p.add_argument("--retry-failed", action="store_true",
                   help="run again the scenes that failed in an earlier run (default: keep their failure)")
    add_run_arguments(p)
    p.set_defaults(run=run)
    one_line_errors(p)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from serving.batch.runner import BatchError, DetectOptions, run_batch
    from serving.batch.inputs import InputError, expand_inputs

    check_device(args.device, args.ray_address)  # before any work
    try:
        scenes = expand_inputs(args.inputs)
    except InputError as exc:
        raise CliError(str(exc)) from exc
    if not scenes:
        raise CliError(f"no scenes found in {' '.join(args.inputs)} (rasters are found by extension: "
                       ".tif .tiff .vrt .jp2 .img)")
    model = resolve_model(args.model, args.device, args.precision)

    def log(line: str) -> None:
        tqdm.write(f"hbdnet batch: {line}", file=sys.stderr)

    try:
        summary = run_batch(
            scenes, Path(args.outdir), model, fmt=args.format,
            options=DetectOptions(score_thr=model.score_threshold(args.score_thr), bands=args.bands,
                                  max_pixels=max_pixels(args)),
            pool_config=pool_config(args),
            retry_failed=args.retry_failed, show_progress=show_progress(args), log=log)
    except BatchError as exc:
        raise CliError(str(exc)) from exc

    parts = [f"{summary.ok} of {len(scenes)} scenes ok"]
    if summary.skipped_ok:
        parts.append(f"{summary.skipped_ok} done before")
    if summary.failed:
        failed = f"{summary.failed} failed"
        if summary.skipped_failed:
            failed += f" ({summary.skipped_failed} in an earlier run; --retry-failed runs them again)"
        parts.append(failed)
    parts.append(f"{summary.detections} bridges found now")
    print(", ".join(parts) + f" -> {Path(args.outdir) / 'manifest.jsonl'}")
    return 1 if summary.failed else 0
