"""``hbdnet detect``: find the bridges in one scene and write them as a GIS file.

The output format follows the extension of ``-o`` (``.gpkg``, ``.geojson``, ``.fgb``); without ``-o``
it is ``<scene stem>_bridges.gpkg`` in the current folder. ``--model`` takes a path to an hbdnet
checkpoint or the NAME of a model bundled with the package (``hbdnet/weights/NAME.safetensors``);
without it the bundled ``default`` model is used (an install without it stops and asks for
``--model``). It never runs random weights.

Exit codes: 0 done, 1 the scene cannot be read or detection failed, 2 usage or setup errors
(arguments, model, output path).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from serving.batch.inputs import scene_stem
from serving.cli.arguments import area_of_interest, check_device, max_pixels, pool_config, resolve_model, show_progress
from serving.cli.errors import CliError


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from serving.detect import DetectOptions, PreparedScene, detect, write
    from serving.engine.scene import SceneError
    from serving.outputs.formats import OutputError
    from serving.reporting import RunEstimate, plan_summary

    t0 = time.perf_counter()
    check_device(args.device, args.ray_address)  # before any work
    output = Path(args.output) if args.output else Path.cwd() / f"{scene_stem(args.scene)}_bridges.gpkg"
    aoi = area_of_interest(args)
    model = resolve_model(args.model, args.device, args.precision, args.runtime)
    bar = tqdm(total=0, unit="window", desc=scene_stem(args.scene),
               disable=args.progress_lines or not show_progress(args), file=sys.stderr, dynamic_ncols=True)

    def say(line: str) -> None:
        tqdm.write(f"hbdnet detect: {line}", file=sys.stderr)

    estimate = RunEstimate(say)

    def on_plan(prepared: PreparedScene) -> None:
        say(f"plan: {plan_summary(prepared.grid, prepared.plan, prepared.resolution)}")
        estimate.start()

    last = [(-1, -1)]

    def progress(done: int, total: int) -> None:
        if args.progress_lines and (done, total) != last[0]:
            last[0] = (done, total)
            print(f"hbdnet detect: progress {done}/{total} windows", file=sys.stderr, flush=True)
        bar.total = total
        bar.update(done - bar.n)
        estimate(done, total)

    options = DetectOptions(score_thr=args.score_thr, bands=args.bands, max_pixels=max_pixels(args), aoi=aoi,
                            gsd=args.gsd, resolution=args.resolution)
    try:
        detections = detect(args.scene, model, options, outputs=[output], pool_config=pool_config(args),
                            progress=progress, on_plan=on_plan)
        notes = write(detections, [output], model)
    except SceneError as exc:
        raise CliError(str(exc), code=1) from exc
    except OutputError as exc:
        raise CliError(str(exc)) from exc
    except Exception as exc:  # model or worker failures: one line here, the traceback with --debug
        raise CliError(f"detection failed: {type(exc).__name__}: {_first_line(exc)} "
                       "(--debug shows the traceback)", code=1) from exc
    finally:
        bar.close()
    for note in notes:
        print(f"hbdnet detect: warning: {note}", file=sys.stderr)
    bridges = len(detections.scores)
    print(f"{bridges} bridge{'' if bridges == 1 else 's'} found in {detections.windows} "
          f"window{'' if detections.windows == 1 else 's'}{searched(detections)}, "
          f"{time.perf_counter() - t0:.1f} s -> {output}")
    return 0


def searched(detections) -> str:
    """What the summary line says of an area of interest ('' without one)."""
    if detections.aoi is None:
        return ""
    dropped = detections.outside_bridges
    crop = detections.resolution.crop
    read = f"only {crop[2] - crop[0]} x {crop[3] - crop[1]} px around it read, " if crop else ""
    return (f" within {detections.aoi} ({read}{detections.outside_windows} windows "
            f"{'there ' if crop else ''}outside it not run, {dropped} bridge{'' if dropped == 1 else 's'} "
            "outside it dropped)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
