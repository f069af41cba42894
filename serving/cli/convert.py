"""``hbdnet convert``: the authors' released mmrotate checkpoint to an hbdnet model file."""

from __future__ import annotations

import argparse

from serving.cli.errors import CliError


def run(args: argparse.Namespace) -> int:
    from hbdnet.checkpoint import save_checkpoint
    from hbdnet.config_io import ConfigError
    from hbdnet.convert import ConversionError, convert_state_dict, read_authors_state_dict
    from hbdnet.training.config import load_experiment

    try:
        base = load_experiment(args.config).model if args.config else None
        authors = read_authors_state_dict(args.checkpoint, trust_pickle=args.trust_pickle)
        model, report = convert_state_dict(authors, base, use_iff=args.iff)
    except (ConversionError, ConfigError) as err:
        raise CliError(str(err)) from err
    for line in report.lines():
        print(line)
    if not report.ok and not args.allow_partial:
        raise CliError("the checkpoint does not match the model (see above); nothing written "
                       "(--allow-partial writes it anyway)", code=3)
    try:
        out = save_checkpoint(args.output, model, meta={"source": str(args.checkpoint), "converted_from": "mmrotate"})
    except OSError as err:
        raise CliError(f"cannot write {args.output}: {err}") from err
    print(f"wrote {out}")
    return 0
