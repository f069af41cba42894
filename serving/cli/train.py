"""``hbdnet train``: stage-by-stage training on DOTA-format data (images/ + labelTxt/).

Resumable: rerunning the same command continues from each stage's ``latest.pth``, written every
``--checkpoint-every`` iterations, at each epoch end, at ``--max-iters`` and on Ctrl-C.
"""

from __future__ import annotations

import argparse

from serving.cli.errors import CliError


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
    from dataclasses import replace

    if args.checkpoint_every is not None:
        cfg = replace(cfg, train=replace(cfg.train, checkpoint_every=args.checkpoint_every))
    if args.init is not None:
        cfg = replace(cfg, init_weights=args.init)
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
