"""Argument types and usage errors shared by every ``hbdnet`` subcommand, and what the options shared
by ``detect`` and ``batch`` become (``pool_config``, ``show_progress``, ``check_device``).

argparse names the ``type`` function in its message when the function raises ``ValueError``
(``invalid _workers value``); these types raise ``ArgumentTypeError`` with a sentence that names the
option's meaning instead, and ``one_line_errors`` keeps every usage error to one line.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from serving.cli.errors import CliError

if TYPE_CHECKING:
    from serving.engine.pools import PoolConfig

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
PRECISIONS = ("auto", "float32", "bfloat16")  # hbdnet.precision.PRECISIONS, without importing torch for --help
RUNTIMES = ("auto", "torch", "onnx", "int8")  # hbdnet.models.onnx_trunk.RUNTIMES, likewise


def one_line_errors(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``p`` report a usage error as one line, exit code 2 (argparse prints the usage first)."""

    def error(message: str):
        p.exit(2, f"{p.prog}: error: {message} (see {p.prog} -h)\n")

    p.error = error  # type: ignore[method-assign]
    return p


def whole_number(what: str, minimum: int, unit: str = "") -> Callable[[str], int]:
    """An argparse ``type``: a whole number (``_`` and ``,`` allowed as separators) of at least
    ``minimum``; errors say ``what`` it is, e.g. ``window must be 1 px or more, got 0``."""

    def parse(text: str) -> int:
        try:
            n = int(text.replace("_", "").replace(",", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a whole number{unit and ' of ' + unit}, "
                                             f"got {text!r}") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be {minimum}{unit and ' ' + unit} or more, got {n}")
        return n

    return parse


def positive_number(what: str, unit: str = "") -> Callable[[str], float]:
    """An argparse ``type``: a number greater than 0, with errors that say ``what`` it is."""

    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number{unit and ' of ' + unit}, got {text!r}") from None
        if not x > 0:
            raise argparse.ArgumentTypeError(f"{what} must be more than 0{unit and ' ' + unit}, got {text}")
        return x

    return parse


def parse_bands(text: str) -> tuple[int, ...]:
    try:
        bands = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bands must be 1-based band numbers like 1,2,3, got {text!r}") from None
    if len(bands) not in (1, 3) or min(bands) < 1:
        raise argparse.ArgumentTypeError(f"give 1 band or 3 bands (R,G,B), numbered from 1, got {text!r}")
    return bands


def resolution(text: str) -> float | str:
    """``--resolution``: ``native``, or metres a pixel above 0."""
    if text.strip().lower() == "native":
        return "native"
    return positive_number("resolution", "m")(text)


def bbox(text: str) -> tuple[float, float, float, float]:
    """``--bbox``: minx,miny,maxx,maxy in degrees of WGS84."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or not (-180 <= values[0] < values[2] <= 180 and -90 <= values[1] < values[3] <= 90):
        raise argparse.ArgumentTypeError(f"bbox must be minx,miny,maxx,maxy in degrees of WGS84 with min < max, "
                                         f"got {text!r}")
    return values  # type: ignore[return-value]


def device(text: str) -> str:
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"device must be auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def precision(text: str) -> str:
    if text not in PRECISIONS:
        raise argparse.ArgumentTypeError(f"precision must be {', '.join(PRECISIONS)}, got {text!r}")
    return text


def score(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"score threshold must be a number in [0, 1], got {text!r}") from None
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"score threshold must be in [0, 1], got {text}")
    return x


def size_in_bytes(text: str) -> int:
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


def duration(text: str) -> float:
    """Seconds from ``7d``, ``12h``, ``30m``, ``90s`` or a number of seconds."""
    from serving.api.retention import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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


def max_pixels(args: argparse.Namespace) -> int:
    """``--max-pixels``, or ``DEFAULT_MAX_PIXELS`` when not given."""
    from serving.engine.scene import DEFAULT_MAX_PIXELS

    return DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels


def area_of_interest(args: argparse.Namespace):
    """``--aoi`` read (``serving.engine.aoi.parse_aoi``), None without it; ``CliError`` (code 2) for one
    that cannot be read."""
    if args.aoi is None:
        return None
    from serving.engine.aoi import AoiError, parse_aoi

    try:
        return parse_aoi(args.aoi)
    except AoiError as exc:
        raise CliError(str(exc)) from None


def pool_config(args: argparse.Namespace) -> PoolConfig:
    """The workers that ``detect`` and ``batch`` start, from their shared options."""
    from serving.engine.pools import PoolConfig  # not at import: `hbdnet --help` stays quick

    given = {} if args.read_threads is None else {"read_threads": args.read_threads}
    return PoolConfig(workers=args.workers, ray_address=args.ray_address, **given)


def show_progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


def resolve_model(arg: str | None, device: str = "auto", precision: str = "auto", runtime: str = "auto"):
    """``serving.model_ref.resolve_model``, its ``ModelError`` as a ``CliError`` (code 2)."""
    from serving.model_ref import ModelError
    from serving.model_ref import resolve_model as resolve

    try:
        return resolve(arg, device, precision, runtime)
    except ModelError as exc:
        raise CliError(str(exc)) from exc
