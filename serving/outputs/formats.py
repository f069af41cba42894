"""The output formats, declared once (what ``-o`` extensions, ``--format`` and the service's ``format``
accept), and the checks of an output path made before any work. Free of GDAL and torch, so that
argument parsing and the scene path's early checks stay quick."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

OutputFormat = Literal["geojson", "gpkg", "fgb"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("geojson", "gpkg", "fgb")
SUPPORTED_SUFFIXES = tuple(f".{fmt}" for fmt in OUTPUT_FORMATS)


class OutputError(ValueError):
    """An output that cannot be written; the message is one line, fit for a CLI to print."""


def check_output_path(path: Path) -> None:
    """Refuse early, with a plain reason, what would otherwise fail deep inside GDAL: an unknown
    extension, a missing or read-only folder, a file where the folder should be, a folder in the
    file's place. Writability is tried (a file created and removed in the folder), not inferred from
    permission bits, which say nothing for root, read-only mounts or ACLs."""
    path = Path(path)
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise OutputError(f"cannot write {path}: unknown output format {path.suffix or '(no extension)'!r}; "
                          f"use one of {', '.join(SUPPORTED_SUFFIXES)}")
    parent = path.parent
    if not parent.is_dir():
        if parent.exists() or any(p.exists() and not p.is_dir() for p in parent.parents):
            raise OutputError(f"cannot write {path}: {_first_file(parent)} is a file, not a folder")
        raise OutputError(f"cannot write {path}: folder {parent} does not exist")
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    try:
        probe = tempfile.NamedTemporaryFile(dir=parent, prefix=".hbdnet-write-test-")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: folder {parent} is not writable "
                          f"({exc.strerror or type(exc).__name__})") from exc
    probe.close()


def fsync_path(path: Path) -> None:
    """Sync ``path`` (a file, or a folder after a rename into it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _first_file(folder: Path) -> Path:
    """The first component of ``folder`` that exists and is not a folder."""
    for p in reversed([folder, *folder.parents]):
        if p.exists() and not p.is_dir():
            return p
    return folder
