"""API keys: who is calling. Each key has a name (what job records and logs carry, so the secret is
stored nowhere but the keys file) and may be an admin key (sees every job).

The keys file is plain text, one key a line: ``NAME KEY`` or ``NAME KEY admin``; blank lines and
lines starting with ``#`` are skipped. The single ``--api-key`` / ``HBDNET_API_KEY`` of earlier
versions is one admin key named ``admin``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

MIN_KEY_LENGTH = 16
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
SINGLE_KEY_NAME = "admin"


class KeysFileError(ValueError):
    """A keys file that cannot be used; the message names the line, never a key."""


@dataclass(frozen=True)
class ApiKey:
    name: str
    key: str
    admin: bool = False

    def __repr__(self) -> str:  # a key never reaches a log or a traceback through its repr
        return f"ApiKey(name={self.name!r}, admin={self.admin})"


def load_keys(path: Path) -> list[ApiKey]:
    """The keys of ``path``; KeysFileError for an unreadable file, a bad line, a duplicate name or key."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeysFileError(f"cannot read the keys file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    keys: list[ApiKey] = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        where = f"keys file {path}, line {number}"
        if len(words) not in (2, 3) or (len(words) == 3 and words[2] != "admin"):
            raise KeysFileError(f"{where}: expected 'NAME KEY' or 'NAME KEY admin'")
        name, key = words[0], words[1]
        if not _NAME.fullmatch(name):
            raise KeysFileError(f"{where}: a name is 1 to 64 letters, digits, '.', '_' or '-'")
        if len(key) < MIN_KEY_LENGTH:
            raise KeysFileError(f"{where}: the key of {name!r} is too short (at least {MIN_KEY_LENGTH} characters)")
        if any(k.name == name for k in keys):
            raise KeysFileError(f"{where}: the name {name!r} is given twice")
        if any(k.key == key for k in keys):
            raise KeysFileError(f"{where}: {name!r} has the same key as another name")
        keys.append(ApiKey(name, key, admin=len(words) == 3))
    if not keys:
        raise KeysFileError(f"keys file {path}: no key in it (lines 'NAME KEY' or 'NAME KEY admin')")
    return keys


def server_keys(api_key: str | None, keys_file: Path | None) -> list[ApiKey]:
    """Every key the server accepts: the keys file's and the single key (an admin key). Empty: no key
    is needed."""
    keys = load_keys(keys_file) if keys_file is not None else []
    if api_key:
        if any(k.key == api_key for k in keys):
            raise KeysFileError("the --api-key is also in the keys file: give each key once")
        name = SINGLE_KEY_NAME if all(k.name != SINGLE_KEY_NAME for k in keys) else "api-key"
        keys.append(ApiKey(name, api_key, admin=True))
    return keys


def find_key(keys: list[ApiKey], presented: str | None) -> ApiKey | None:
    """The key ``presented`` is, or None. Digests of equal length are compared with every key, so the
    time taken tells nothing about which key, or how much of one, was right."""
    if presented is None:
        return None
    digest = hashlib.sha256(presented.encode()).digest()
    found = None
    for k in keys:
        if hmac.compare_digest(digest, hashlib.sha256(k.key.encode()).digest()):
            found = k
    return found
