"""``hbdnet finetune``: adapt a model to your scenes from a corrected bridge layer (``serving.finetune``).

Ctrl-C saves the run; the same command resumes it.
"""

from __future__ import annotations

import argparse

from serving.cli.errors import CliError


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hbdnet.checkpoint import CheckpointError
    from hbdnet.inference import resolve_device
    from hbdnet.training.trainer import TrainingInterrupted
    from serving.finetune.data import FinetuneDataError
    from serving.finetune.run import FinetuneOptions, FinetuneWorkDirError, finetune

    output = Path(args.output)
    if output.suffix != ".safetensors":
        raise CliError(f"the output must be a .safetensors file, got {output}")
    if not output.parent.is_dir():
        raise CliError(f"the output's folder does not exist: {output.parent}")
    scenes = [Path(s) for s in args.scenes]
    for scene in scenes:
        if not scene.is_file():
            raise CliError(f"scene not found: {scene}")
    options = FinetuneOptions(epochs=args.epochs, lr=args.lr, parts=tuple(args.train), bands=args.bands,
                              max_iters=args.max_iters, checkpoint_every=args.checkpoint_every,
                              device=str(resolve_device(args.device)))
    try:
        result = finetune(args.model, scenes, Path(args.labels), output,
                          reviewed=Path(args.reviewed) if args.reviewed else None,
                          work_dir=Path(args.work_dir) if args.work_dir else None, options=options,
                          progress=not args.no_progress, log=print)
    except TrainingInterrupted as stop:
        print(f"hbdnet finetune: interrupted; saved {stop.path}; run the same command again to resume")
        return 130
    except (FinetuneDataError, FinetuneWorkDirError, CheckpointError, ValueError, OSError) as err:
        raise CliError(str(err)) from err
    print(f"{result.bridges} bridge(s) labelled on {len(scenes)} scene(s)"
          + (f"; {result.labels_outside} polygon(s) on no scene, not used" if result.labels_outside else ""))
    if not result.reviewed_given:
        print("no --reviewed areas: every scene's whole footprint was taken as reviewed (a window there without "
              "a label was taught as holding no bridge)")
    if result.output is None:
        print(f"stopped at --max-iters {args.max_iters}; the same command without it resumes the run")
        return 0
    print(f"operating point {result.operating_point}")
    print(f"int8 trunk {result.int8}")
    print(f"wrote {result.output}")
    return 0
