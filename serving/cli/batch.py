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

from serving.cli.arguments import area_of_interest, check_device, max_pixels, pool_config, resolve_model, show_progress
from serving.cli.errors import CliError


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from serving.batch.inputs import InputError, StacSearch, expand_inputs, stac_search_scenes
    from serving.batch.manifest import BatchError
    from serving.batch.runner import run_batch
    from serving.detect import DetectOptions

    check_device(args.device, args.ray_address)  # before any work
    if not args.inputs and not args.stac_search:
        raise CliError("give INPUTS (rasters, folders, lists, STAC files) or --stac-search URL")
    if args.stac_search is None and (args.bbox or args.collections or args.datetime):
        raise CliError("--bbox, --collections and --datetime narrow a --stac-search")
    aoi = area_of_interest(args)
    try:
        scenes = expand_inputs(args.inputs)
        if args.stac_search:
            search = StacSearch(args.stac_search, args.bbox, tuple(args.collections or ()), args.datetime,
                                args.max_items)
            found = stac_search_scenes(search)
            known = {s.uri for s in scenes}
            scenes += [s for s in found if s.uri not in known]
            print(f"hbdnet batch: STAC search found {len(found)} scene{'' if len(found) == 1 else 's'}",
                  file=sys.stderr)
    except InputError as exc:
        raise CliError(str(exc)) from exc
    if not scenes:
        where = " ".join(args.inputs) or f"the STAC search at {args.stac_search}"
        raise CliError(f"no scenes found in {where} (rasters are found by extension: .tif .tiff .vrt .jp2 .img; "
                       "STAC assets by their TIFF media type)")
    if aoi is None and args.stac_search and args.bbox:
        from serving.engine.aoi import parse_aoi

        aoi = parse_aoi(",".join(repr(v) for v in args.bbox))  # the search's area is the area searched
    model = resolve_model(args.model, args.device, args.precision, args.runtime)

    def log(line: str) -> None:
        tqdm.write(f"hbdnet batch: {line}", file=sys.stderr)

    try:
        summary = run_batch(
            scenes, Path(args.outdir), model, fmt=args.format,
            options=DetectOptions(score_thr=args.score_thr, bands=args.bands, max_pixels=max_pixels(args), aoi=aoi,
                                  gsd=args.gsd, resolution=args.resolution),
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
    parts.append(f"{summary.detections} bridge{'' if summary.detections == 1 else 's'} found now")
    print(", ".join(parts) + f" -> {Path(args.outdir) / 'manifest.jsonl'}")
    return 1 if summary.failed else 0
