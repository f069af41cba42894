"""The ``hbdnet`` command: one entry point, one subcommand per job.

Each subcommand lives in the module that owns its job and exposes ``add_parser(subparsers)``;
modules are imported lazily so that ``hbdnet --help`` stays fast and a missing optional
dependency only affects the subcommand that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from hbdnet.commands import CliError

# name -> module providing add_parser(subparsers) and run(args) -> int
SUBCOMMANDS: dict[str, str] = {
    "plan": "hbdnet.commands.plan",
    "convert": "hbdnet.commands.convert",
    "train": "hbdnet.commands.train",
    "export": "hbdnet.commands.export",
    "eval": "serving.cli.evaluate",
    "detect": "serving.cli.detect",
    "batch": "serving.cli.batch",
    "serve": "serving.cli.serve",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hbdnet", description="Holistic bridge detection in large scenes.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except CliError as err:
        if args.debug:
            raise
        print(f"hbdnet {args.command}: error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print(f"hbdnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
