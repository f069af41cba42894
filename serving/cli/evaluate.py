"""``hbdnet eval``: AP of a model on whole labelled images (DOTA layout), by bridge length; the model
is named as for ``hbdnet detect`` (the bundled ``default`` when none is)."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

from serving.cli.arguments import check_device, resolve_model
from serving.cli.errors import CliError


def strict_json(value: Any) -> Any:
    """``value`` with every NaN or infinity made None, so that ``json.dumps(allow_nan=False)`` holds."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        return strict_json(value.item())  # numpy / torch scalars
    return value


def _check_output(path: Path) -> None:
    """The metrics file can be written: checked before an evaluation that may take hours."""
    parent = path.parent
    if path.is_dir():
        raise CliError(f"cannot write {path}: it is a folder")
    if not parent.is_dir():
        what = "is a file, not a folder" if parent.exists() else "does not exist"
        raise CliError(f"cannot write {path}: {parent} {what}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CliError(f"cannot write {path}: folder {parent} is not writable")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hbdnet.data.dota import DotaFormatError, load_dota_folder
    from serving.evaluate import evaluate_model

    check_device(args.device)
    if args.output:
        _check_output(Path(args.output))
    model = resolve_model(args.model, args.device, runtime=args.runtime)
    try:
        images = load_dota_folder(Path(args.data))
    except (DotaFormatError, OSError) as err:
        raise CliError(str(err)) from err
    if not images:
        raise CliError(f"no labelled images under {args.data} (expected images/ and labelTxt/)")
    bar = tqdm(total=len(images), desc="images", leave=False, disable=args.quiet)

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    metrics = evaluate_model(images, model, args.task, args.merge, args.metric == "voc07", args.workers, progress)
    bar.close()
    for key, value in metrics.items():
        print(f"{key}: {_metric(value)}")
    if args.output:
        try:
            Path(args.output).write_text(json.dumps(strict_json(metrics), indent=2, allow_nan=False) + "\n")
        except OSError as err:
            raise CliError(f"cannot write {args.output}: {err.strerror or err}") from err
    return 0


def _metric(value: object) -> str:
    """A metric as printed: 4 decimals; n/a for one without a value (a length bin with no bridge)."""
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else "n/a"
    return str(value)
