"""``hbdnet export``: a trained model (``.pth``) to the shipping format, safetensors without pickle,
with int8 trunks for CPUs when ``--int8 DATA`` is given (``hbdnet.calibration``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from serving.cli.errors import CliError


def run(args: argparse.Namespace) -> int:
    from hbdnet.calibration import stored_int8_trunks
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
    dtype = "float16" if args.fp16 else "float32"
    try:
        only = tuple(n.strip() for n in args.int8_detectors.split(",")) if args.int8_detectors else None
        if only is not None and args.int8 is None:
            raise CliError("--int8-detectors goes with --int8 DATA")
        trunks = stored_int8_trunks(model, dtype, args.int8, only) if args.int8 is not None else None
        path = save_safetensors(out, model, meta=meta, score_thr=score_thr, dtype=dtype, int8_trunks=trunks)
    except ValueError as err:
        raise CliError(str(err)) from err
    except OSError as err:
        raise CliError(f"cannot write {out}: {err}") from err
    size = path.stat().st_size / 2**20
    print(f"wrote {path} ({size:.1f} MB, {dtype}" + (f", int8 trunks: {', '.join(sorted(trunks))}" if trunks else "")
          + (f", score_thr {score_thr:g}" if score_thr is not None else "") + ")")
    return 0
