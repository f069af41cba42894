"""``hbdnet eval``: AP of a model on whole labelled images (DOTA layout), by bridge length."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

from hbdnet.commands import CliError
from hbdnet.commands.arguments import one_line_errors, whole_number


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model on whole labelled images (AP50, AP75, mAP, by length)")
    p.add_argument("--model", required=True, help="hbdnet model file (from train or convert)")
    p.add_argument("--data", required=True, help="folder with images/ and labelTxt/")
    p.add_argument("--task", choices=["obb", "hbb"], default="obb", help="rotated (obb) or axis-aligned (hbb) IoU")
    p.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--merge", choices=["holistic", "authors"], default="holistic",
                   help="how window detections are merged (authors = per-level NMS 0.4, then 0.5 across levels)")
    p.add_argument("--metric", choices=["voc07", "area"], default="voc07", help="11-point VOC07 AP (the authors') or area AP")
    p.add_argument("--workers", type=whole_number("workers", 0), default=0, help="Ray workers (0: in this process)")
    p.add_argument("--output", help="also write the metrics as JSON here (strict JSON: a metric without "
                                    "value, such as the AP of a length bin with no bridge, is null)")
    p.set_defaults(run=run)
    one_line_errors(p)


def _device(text: str) -> str:
    from serving.cli.detect import _device as device

    return device(text)


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

    from hbdnet.checkpoint import CheckpointError, read_checkpoint
    from hbdnet.data.dota import DotaFormatError, load_dota_folder
    from serving.cli.detect import check_device, checkpoint_error_line
    from serving.engine.whole_images import evaluate_model

    check_device(args.device)
    if args.output:
        _check_output(Path(args.output))
    try:
        read_checkpoint(args.model)
        images = load_dota_folder(Path(args.data))
    except (CheckpointError, DotaFormatError, OSError) as err:
        raise CliError(checkpoint_error_line(err)) from err
    if not images:
        raise CliError(f"no labelled images under {args.data} (expected images/ and labelTxt/)")
    bar = tqdm(total=len(images), desc="images", leave=False)

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    metrics = evaluate_model(images, args.model, args.task, args.device, args.merge, args.metric == "voc07",
                             args.workers, progress)
    bar.close()
    for key, value in metrics.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    if args.output:
        try:
            Path(args.output).write_text(json.dumps(strict_json(metrics), indent=2, allow_nan=False) + "\n")
        except OSError as err:
            raise CliError(f"cannot write {args.output}: {err.strerror or err}") from err
    return 0
