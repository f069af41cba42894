"""Browsers on other origins (CORS): off unless the operator names the origins (``--cors-origin``),
so that a web map elsewhere can call the API with its key, and no other page can read the answers."""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from serving.api.settings import API_KEY_HEADER


def check_origin(text: str) -> str:
    """``text`` as an origin (``scheme://host[:port]``, no path; ``*`` for any), else ValueError."""
    value = text.strip().rstrip("/")
    if value == "*":
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query or parts.fragment:
        raise ValueError(f"a CORS origin is scheme://host[:port] like https://maps.example.org "
                         f"(or * for any), got {text[:100]!r}")
    return value


def install_cors(app: FastAPI, origins: list[str]) -> None:
    """Answer preflights and add the CORS headers for ``origins`` only; nothing when there are none.
    The key travels in a header, never a cookie, so credentials stay off."""
    if not origins:
        return
    app.add_middleware(CORSMiddleware, allow_origins=[check_origin(o) for o in origins], allow_credentials=False,
                       allow_methods=["GET", "POST", "DELETE"],
                       allow_headers=[API_KEY_HEADER, "Content-Type", "Prefer"],
                       expose_headers=["Location", "Retry-After", "Preference-Applied", "Link",
                                       "Content-Disposition"])
