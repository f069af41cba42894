"""``hbdnet export``: a trained model (``.pth``) to the shipping format, safetensors without pickle."""

from __future__ import annotations

import argparse

from serving.cli.errors import CliError


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hbdnet.checkpoint import SAFETENSORS_SUFFIX, CheckpointError, load_model, save_safetensors

    out = Path(args.output)
    if out.suffix != SAFETENSORS_SUFFIX:
        raise CliError(f"the output must end in {SAFETENSORS_SUFFIX}: {out}")
    try:
        model, meta = load_model(args.model)
    except CheckpointError as err:
        raise CliError(str(err)) from err
    meta = {k: v for k, v in meta.items() if k not in ("stage", "epoch", "iteration")}
    meta["source"] = Path(args.model).name
    if args.name:
        meta["name"] = args.name
    for note in args.note:
        key, sep, value = note.partition("=")
        if not sep or not key:
            raise CliError(f"--note takes KEY=VALUE, got {note!r}")
        meta[key] = value
    score_thr = args.score_thr if args.score_thr is not None else meta.pop("score_thr", None)
    try:
        path = save_safetensors(out, model, meta=meta, score_thr=score_thr,
                                dtype="float16" if args.fp16 else "float32")
    except ValueError as err:
        raise CliError(str(err)) from err
    except OSError as err:
        raise CliError(f"cannot write {out}: {err}") from err
    size = path.stat().st_size / 2**20
    print(f"wrote {path} ({size:.1f} MB, {'float16' if args.fp16 else 'float32'}"
          + (f", score_thr {score_thr:g}" if score_thr is not None else "") + ")")
    return 0
