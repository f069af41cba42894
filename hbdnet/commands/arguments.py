"""Argument types and usage errors shared by every ``hbdnet`` subcommand.

argparse names the ``type`` function in its message when the function raises ``ValueError``
(``invalid _workers value``); these types raise ``ArgumentTypeError`` with a sentence that names the
option's meaning instead, and ``one_line_errors`` keeps every usage error to one line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def one_line_errors(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``p`` report a usage error as one line, exit code 2 (argparse prints the usage first)."""

    def error(message: str):
        p.exit(2, f"{p.prog}: error: {message} (see {p.prog} -h)\n")

    p.error = error  # type: ignore[method-assign]
    return p


def whole_number(what: str, minimum: int, unit: str = "") -> Callable[[str], int]:
    """An argparse ``type``: a whole number (``_`` and ``,`` allowed as separators) of at least
    ``minimum``; errors say ``what`` it is, e.g. ``window must be 1 px or more, got 0``."""

    def parse(text: str) -> int:
        try:
            n = int(text.replace("_", "").replace(",", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a whole number{unit and ' of ' + unit}, "
                                             f"got {text!r}") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be {minimum}{unit and ' ' + unit} or more, got {n}")
        return n

    return parse


def positive_number(what: str, unit: str = "") -> Callable[[str], float]:
    """An argparse ``type``: a number greater than 0, with errors that say ``what`` it is."""

    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number{unit and ' of ' + unit}, got {text!r}") from None
        if not x > 0:
            raise argparse.ArgumentTypeError(f"{what} must be more than 0{unit and ' ' + unit}, got {text}")
        return x

    return parse
