"""``hbdnet detect``: find the bridges in one scene and write them as a GIS file.

The output format follows the extension of ``-o`` (``.gpkg``, ``.geojson``, ``.fgb``); without ``-o``
it is ``<scene stem>_bridges.gpkg`` in the current folder. ``--model`` takes a path to an hbdnet
checkpoint or the NAME of a model bundled with the package (``hbdnet/weights/NAME.safetensors``);
without it the bundled ``default`` model is used (an install without it stops and asks for
``--model``). It never runs random weights.

Exit codes: 0 done, 1 the scene cannot be read or detection failed, 2 usage or setup errors
(arguments, model, output path).

The model options and their resolution are shared with ``hbdnet batch`` (``serving.cli.batch``).
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from hbdnet.commands import CliError
from hbdnet.commands.arguments import one_line_errors, whole_number
from serving.engine.detectors import DetectorSpec
from serving.batch.inputs import scene_stem

if TYPE_CHECKING:
    from serving.engine.workers import PoolConfig

DEFAULT_MODEL = "default"
MODEL_SUFFIXES = (".pth", ".pt", ".safetensors")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _looks_like_path(arg: str) -> bool:
    return ("/" in arg or "\\" in arg or arg.lower().endswith(MODEL_SUFFIXES)
            or not _NAME.fullmatch(arg) or Path(arg).exists())


def check_device(device: str, ray_address: str | None = None) -> None:
    """``CliError`` (code 2) for ``cuda`` / ``cuda:N`` on a machine whose GPUs do not include it,
    before any work. Not checked when joining a Ray cluster: its GPUs are not this machine's."""
    if not device.startswith("cuda") or ray_address:
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if count == 0:
        raise CliError(f"--device {device}: this machine has no CUDA GPU that PyTorch can use "
                       "(use --device cpu or auto)")
    if index >= count:
        raise CliError(f"--device {device}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def checkpoint_error_line(exc: BaseException) -> str:
    """A ``CheckpointError`` as one line: torch's many-line reasons (weights-only unpickling, a
    corrupt zip) cut to what a user can act on."""
    text = _ANSI.sub("", str(exc)).strip()
    cause = exc.__cause__
    if cause is None or ("\n" not in text and len(text) <= 200):
        return text.splitlines()[0] if text else type(exc).__name__
    detail = _ANSI.sub("", str(cause))
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", detail)
    if unsafe:
        reason = f"it holds a Python object ({unsafe.group(1)}) that is not loaded, for safety"
    else:
        first = detail.strip().splitlines()[0] if detail.strip() else ""
        reason = first.split(". ", 1)[0].rstrip(".") or type(cause).__name__
    head = text.split(" (", 1)[0] if " is not a readable PyTorch checkpoint" in text else text.splitlines()[0]
    return f"{head} ({type(cause).__name__}: {reason})"


def resolve_model(arg: str | None, device: str = "auto", precision: str = "auto"):
    """The ``ModelRef`` that ``--model ARG`` names, checked to be an hbdnet checkpoint, to run on
    ``device`` in ``precision`` (``hbdnet.precision``).

    Raises ``CliError`` (code 2) for a missing file, an unknown NAME, no bundled default, or a file
    that is not an hbdnet checkpoint.
    """
    from hbdnet.checkpoint import CheckpointError, bundled_model_path, bundled_models
    from serving.batch.runner import model_ref

    bundled = bundled_models()
    if arg is None:
        if DEFAULT_MODEL not in bundled:
            raise CliError("this hbdnet ships no bundled default model yet: pass --model PATH to an hbdnet "
                           "checkpoint (`hbdnet convert` makes one from the authors' weights)")
        name, path = DEFAULT_MODEL, bundled_model_path(DEFAULT_MODEL)
    elif _looks_like_path(arg):
        path = Path(arg).expanduser()
        if not path.is_file():
            raise CliError(f"model file not found: {arg}")
        name = path.stem
    else:
        if arg not in bundled:
            known = ", ".join(bundled) or "none yet"
            raise CliError(f"unknown model name {arg!r} (bundled models: {known}); "
                           "pass --model PATH to use an hbdnet checkpoint")
        name, path = arg, bundled_model_path(arg)
    spec = DetectorSpec(kind="model", path=str(path), device=device, precision=precision)
    try:
        return model_ref(spec, name=name)
    except CheckpointError as exc:
        raise CliError(checkpoint_error_line(exc)) from exc


def parse_bands(text: str) -> tuple[int, ...]:
    try:
        bands = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bands must be 1-based band numbers like 1,2,3, got {text!r}") from None
    if len(bands) not in (1, 3) or min(bands) < 1:
        raise argparse.ArgumentTypeError(f"give 1 band or 3 bands (R,G,B), numbered from 1, got {text!r}")
    return bands


def _device(text: str) -> str:
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"device must be auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def _precision(text: str) -> str:
    from hbdnet.precision import PRECISIONS  # here, not at import: it brings torch

    if text not in PRECISIONS:
        raise argparse.ArgumentTypeError(f"precision must be {', '.join(PRECISIONS)}, got {text!r}")
    return text


def max_pixels(args: argparse.Namespace) -> int:
    """``--max-pixels``, or ``DEFAULT_MAX_PIXELS`` when not given."""
    from serving.engine.scene import DEFAULT_MAX_PIXELS

    return DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels


def pool_config(args: argparse.Namespace) -> PoolConfig:
    """The workers that ``detect`` and ``batch`` start, from their shared options."""
    from serving.engine.workers import PoolConfig  # not at import: `hbdnet --help` stays quick

    given = {} if args.read_threads is None else {"read_threads": args.read_threads}
    return PoolConfig(workers=args.workers, ray_address=args.ray_address, **given)


def _score(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"score threshold must be a number in [0, 1], got {text!r}") from None
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"score threshold must be in [0, 1], got {text}")
    return x


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The model and worker options that ``detect`` and ``batch`` share."""
    p.add_argument("--model", metavar="NAME|PATH",
                   help="hbdnet checkpoint file, or the name of a bundled model (default: the bundled "
                        "'default' model)")
    p.add_argument("--device", type=_device, default="auto",
                   help="cpu, cuda or cuda:N (default auto: cuda when this machine has a GPU)")
    p.add_argument("--precision", type=_precision, default="auto", metavar="P",
                   help="auto, float32 or bfloat16: the model's heavy convolutions and products in bfloat16 "
                        "(default auto: bfloat16 on a GPU that has it, float32 on a CPU)")
    p.add_argument("--workers", type=whole_number("workers", 0), default=None, metavar="N",
                   help="0 runs the model in this process without Ray; N starts N Ray workers "
                        "(default: one per GPU; without a GPU, this process)")
    p.add_argument("--read-threads", type=whole_number("read threads", 1), default=None, metavar="N",
                   help="threads reading windows ahead in each worker (default 2 beside a CPU model; beside a "
                        "GPU, enough to feed it from the host's cores; each costs a little memory)")
    p.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster ('auto' or host:port)")
    p.add_argument("--score-thr", type=_score, default=None, metavar="X",
                   help="drop merged bridges scoring below X (default: the operating point stored with the "
                        "model, else 0; 0 keeps everything the model reports)")
    # None stands for serving.engine.scene.DEFAULT_MAX_PIXELS (not imported here: it brings rasterio).
    p.add_argument("--max-pixels", type=whole_number("max pixels", 1), default=None, metavar="N",
                   help="refuse scenes of more than N pixels, width x height (default 2,000,000,000)")
    p.add_argument("--bands", type=parse_bands, metavar="R,G,B",
                   help="1-based bands to use as R,G,B (or one band as grey); default: the first three")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    # SUPPRESS: `hbdnet --debug detect` and `hbdnet detect --debug` both work; absent, the top level decides.
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show full tracebacks on errors")


def show_progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detect", help="detect bridges in one scene and write them as a GIS file",
        description="Detect bridges in one scene and write them as a GIS file (format from the -o "
                    "extension). Exit codes: 0 done, 1 the scene could not be processed, 2 usage or "
                    "setup error (arguments, model, output path).")
    p.add_argument("scene", help="GeoTIFF / COG / any raster: local path, http(s):// URL, /vsicurl/..., s3://")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="output file, .gpkg, .geojson or .fgb (default: ./<scene stem>_bridges.gpkg)")
    add_run_arguments(p)
    p.set_defaults(run=run)
    one_line_errors(p)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from serving.batch.runner import DetectOptions, detect_to_file
    from serving.engine.pipeline import PreparedScene, RunEstimate, plan_summary
    from serving.outputs.geo_output import OutputError, check_output_path
    from serving.engine.scene import SceneError

    check_device(args.device, args.ray_address)  # before any work
    output = Path(args.output) if args.output else Path.cwd() / f"{scene_stem(args.scene)}_bridges.gpkg"
    try:
        check_output_path(output)  # before loading a model or reading a pixel
    except OutputError as exc:
        raise CliError(str(exc)) from exc
    model = resolve_model(args.model, args.device, args.precision)
    bar = tqdm(total=0, unit="window", desc=scene_stem(args.scene), disable=not show_progress(args),
               file=sys.stderr, dynamic_ncols=True)

    def say(line: str) -> None:
        tqdm.write(f"hbdnet detect: {line}", file=sys.stderr)

    estimate = RunEstimate(say)

    def on_plan(prepared: PreparedScene) -> None:
        say(f"plan: {plan_summary(prepared)}")
        estimate.start()

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
        estimate(done, total)

    try:
        outcome = detect_to_file(
            args.scene, output, model,
            DetectOptions(score_thr=model.score_threshold(args.score_thr), bands=args.bands,
                          max_pixels=max_pixels(args)),
            pool_config=pool_config(args), progress=progress, on_plan=on_plan)
    except SceneError as exc:
        raise CliError(str(exc), code=1) from exc
    except OutputError as exc:
        raise CliError(str(exc)) from exc
    except Exception as exc:  # model or worker failures: one line here, the traceback with --debug
        raise CliError(f"detection failed: {type(exc).__name__}: {_first_line(exc)} "
                       "(--debug shows the traceback)", code=1) from exc
    finally:
        bar.close()
    for note in outcome.notes:
        print(f"hbdnet detect: warning: {note}", file=sys.stderr)
    bridges = f"{outcome.detections} bridge{'' if outcome.detections == 1 else 's'}"
    windows = f"{outcome.windows} window{'' if outcome.windows == 1 else 's'}"
    print(f"{bridges} found in {windows}, {outcome.seconds:.1f} s -> {outcome.output}")
    return 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
