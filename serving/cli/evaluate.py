"""``hbdnet eval``: AP of a model on whole labelled images (DOTA layout), by bridge length."""

from __future__ import annotations

import argparse
import json

from hbdnet.commands import CliError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model on whole labelled images (AP50, AP75, mAP, by length)")
    p.add_argument("--model", required=True, help="hbdnet model file (from train or convert)")
    p.add_argument("--data", required=True, help="folder with images/ and labelTxt/")
    p.add_argument("--task", choices=["obb", "hbb"], default="obb", help="rotated (obb) or axis-aligned (hbb) IoU")
    p.add_argument("--device", default="cpu")
    p.add_argument("--merge", choices=["holistic", "authors"], default="holistic",
                   help="how window detections are merged (authors = per-level NMS 0.4, then 0.5 across levels)")
    p.add_argument("--metric", choices=["voc07", "area"], default="voc07", help="11-point VOC07 AP (the authors') or area AP")
    p.add_argument("--workers", type=int, default=0, help="Ray workers (0: in this process)")
    p.add_argument("--output", help="also write the metrics as JSON here")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from hbdnet.checkpoint import CheckpointError, read_checkpoint
    from hbdnet.data.dota import DotaFormatError, load_dota_folder
    from serving.engine.whole_images import evaluate_model

    try:
        read_checkpoint(args.model)
        images = load_dota_folder(Path(args.data))
    except (CheckpointError, DotaFormatError, OSError) as err:
        raise CliError(str(err)) from err
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
        Path(args.output).write_text(json.dumps(metrics, indent=2))
    return 0
