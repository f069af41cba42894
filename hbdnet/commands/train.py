"""``hbdnet train``: stage-by-stage training on DOTA-format data (images/ + labelTxt/).

Resumable: rerunning the same command continues from each stage's ``latest.pth``, written every
``--checkpoint-every`` iterations, at each epoch end, at ``--max-iters`` and on Ctrl-C.
"""

from __future__ import annotations

import argparse

from hbdnet.commands import CliError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train HBD-Net on DOTA-format data, stage by stage (resumable)")
    p.add_argument("--config", required=True, help="experiment YAML (see configs/)")
    p.add_argument("--data", required=True, help="folder with images/ and labelTxt/ (GLH-Bridge / DOTA layout)")
    p.add_argument("--work-dir", help="where checkpoints and logs go (default: runs/<config name>)")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu", help="cpu or cuda (default: cuda when present)")
    p.add_argument("--stage", action="append", dest="stages", help="train only this stage (repeatable)")
    p.add_argument("--epochs", type=int, help="override every stage's epochs (schedule steps scale with it)")
    p.add_argument("--max-iters", type=int, help="stop each stage at this iteration and save it (latest.pth); "
                   "the same command without it (or with a larger one) resumes")
    p.add_argument("--checkpoint-every", type=int,
                   help="iterations between resumable saves (default: the config's train.checkpoint_every)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hbdnet.config_io import ConfigError
    from hbdnet.data.dota import DotaFormatError
    from hbdnet.inference import resolve_device
    from hbdnet.training.config import load_experiment
    from hbdnet.training.trainer import train

    try:
        cfg = load_experiment(args.config)
        device = resolve_device(args.device)
    except (ConfigError, ValueError) as err:
        raise CliError(str(err)) from err
    if args.checkpoint_every is not None:
        if args.checkpoint_every < 0:
            raise CliError("--checkpoint-every must be >= 0")
        from dataclasses import replace

        cfg = replace(cfg, train=replace(cfg.train, checkpoint_every=args.checkpoint_every))
    data = Path(args.data)
    if not data.is_dir():
        raise CliError(f"data folder not found: {data}")
    work_dir = Path(args.work_dir or Path("runs") / cfg.name)
    try:
        train(cfg, data, work_dir, device=str(device), stages=args.stages, max_iters=args.max_iters,
              epochs=args.epochs, progress=not args.no_progress)
    except (DotaFormatError, ValueError, OSError) as err:
        raise CliError(str(err)) from err
    return 0
