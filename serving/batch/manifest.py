"""``OUTDIR/manifest.jsonl``: one JSON line per finished scene of a batch, what resuming reads, and
the output names that stay with their scenes.

Output names come from the scene's stem. A name already used in the manifest stays with its scene;
a stem that two scenes share (case-insensitive), or that an earlier scene in the manifest holds, gets
the first 8 hex digits of the SHA-1 of the scene URI appended, so names never depend on order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serving.batch.inputs import SceneInput, short_hash
from serving.outputs.formats import fsync_path

MANIFEST_NAME = "manifest.jsonl"


class BatchError(Exception):
    """The batch cannot start (output folder, manifest in use); the message is one line."""


class Manifest:
    """``OUTDIR/manifest.jsonl``, opened for appending and locked against a second run on the folder."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "a+b")
        try:
            self._lock()
            self._repair_tail()
        except BaseException:
            self._file.close()
            raise

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, the user keeps runs apart
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise BatchError(f"another hbdnet batch is running on {self.path.parent} "
                             f"({self.path.name} is locked)") from exc

    def _repair_tail(self) -> None:
        """End a line cut short by a crash, so that the next record starts on a line of its own."""
        self._file.seek(0, os.SEEK_END)
        if self._file.tell() == 0:
            return
        self._file.seek(-1, os.SEEK_END)
        if self._file.read(1) != b"\n":
            self._file.write(b"\n")
            self._sync()

    def records(self) -> list[dict[str, Any]]:
        """Every complete record in file order; a line cut short by a crash is skipped."""
        self._file.seek(0)
        out = []
        for line in self._file.read().splitlines():
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(rec, dict) and isinstance(rec.get("scene"), str):
                out.append(rec)
        return out

    def latest(self) -> dict[str, dict[str, Any]]:
        """The last record of each scene."""
        return {rec["scene"]: rec for rec in self.records()}

    def append(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
        self._sync()

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_manifest(outdir: Path) -> Manifest:
    """Create ``outdir`` if needed and open its manifest; ``BatchError`` if that is not possible."""
    if outdir.exists() and not outdir.is_dir():
        raise BatchError(f"output folder {outdir} is a file")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        existed = (outdir / MANIFEST_NAME).exists()
        manifest = Manifest(outdir / MANIFEST_NAME)
    except OSError as exc:
        raise BatchError(f"cannot write to output folder {outdir}: {exc.strerror or exc}") from exc
    if not os.access(outdir, os.W_OK | os.X_OK):
        manifest.close()
        raise BatchError(f"output folder {outdir} is not writable")
    if not existed:
        fsync_path(outdir)
    return manifest


def assign_outputs(scenes: Sequence[SceneInput], previous: dict[str, dict[str, Any]],
                   fmt: str) -> dict[str, str]:
    """Output file name (in OUTDIR) for each scene URI; see the module docstring for the rule."""
    names: dict[str, str] = {}
    claimed: dict[str, str] = {}  # lower-cased base -> scene holding it, from the manifest
    for uri, rec in previous.items():
        out = rec.get("output")
        if isinstance(out, str) and out:
            claimed.setdefault(_base(out).lower(), uri)
    fresh = []
    for scene in scenes:
        rec = previous.get(scene.uri)
        out = rec.get("output") if rec else None
        if isinstance(out, str) and out and claimed.get(_base(out).lower()) == scene.uri:
            names[scene.uri] = f"{_base(out)}.{fmt}"
        else:
            fresh.append(scene)
    counts: dict[str, int] = {}
    for scene in fresh:
        key = f"{scene.name}_bridges".lower()
        counts[key] = counts.get(key, 0) + 1
    for scene in fresh:
        base = f"{scene.name}_bridges"
        if counts[base.lower()] > 1 or base.lower() in claimed:
            base = f"{scene.name}-{short_hash(scene.uri)}_bridges"
        names[scene.uri] = f"{base}.{fmt}"
    return names


def _base(file_name: str) -> str:
    return file_name.rsplit(".", 1)[0] if "." in file_name else file_name
