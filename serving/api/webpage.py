"""The web page at ``/`` for a person in a browser (the OGC landing document stays the answer for
clients): submit a scene, follow the jobs, see the bridges on a map, download the layers.

The page is plain HTML, CSS and JavaScript in ``serving/api/static`` with Leaflet vendored beside it
(``web/package.json`` copies it from the npm registry), so it works with no network at all: no CDN,
no web fonts, no tiles from outside unless the operator names a basemap (``--basemap``). The page
itself holds no data and needs no key; it asks for one and sends it with every call of the API.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from serving.api.service import JobService
from serving.api.settings import Settings

STATIC_URL = "/static"
BRIDGE_COLOUR = "#ff4500"  # the outline of serving/outputs/styles/bridges.qml


def static_folder() -> str:
    return str(importlib.resources.files("serving.api") / "static")


def _quality(accept: str, media_type: str) -> float:
    """The q of ``media_type`` in an Accept header, listed by name (0 when only a wildcard covers it)."""
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        if fields[0].lower() == media_type:
            q = next((f[2:] for f in fields[1:] if f.lower().startswith("q=")), "1")
            try:
                return float(q)
            except ValueError:
                return 0.0
    return 0.0


def wants_html(request: Request) -> bool:
    """A browser asking for a page: ``?f=html``, or an Accept header that names ``text/html`` ahead of
    JSON. ``*/*`` alone (curl, OWSLib, requests) and ``?f=json`` get JSON."""
    f = request.query_params.get("f")
    if f in ("html", "json"):
        return f == "html"
    accept = request.headers.get("accept", "")
    html = _quality(accept, "text/html")
    return html > 0 and html >= max(_quality(accept, "application/json"), _quality(accept, "application/geo+json"))


def check_basemap(template: str) -> str:
    """``template`` if it is an http(s) tile URL with {z}, {x} and {y}, else ValueError."""
    parts = urlsplit(template)
    if parts.scheme not in ("http", "https") or not parts.netloc or not all(
            f"{{{k}}}" in template for k in "zxy") or "{s}" in parts.netloc.partition(".")[2]:
        raise ValueError(f"--basemap is an http(s) tile URL with {{z}}, {{x}} and {{y}} ({{s}} only in the host's "
                         f"first label), like https://tile.openstreetmap.org/{{z}}/{{x}}/{{y}}.png; got "
                         f"{template[:200]!r}")
    return template


def content_security_policy(basemap: str | None) -> str:
    """Scripts, styles and everything fetched from this server only (blob: for the pictures the page
    fetches with the key), and tiles from the basemap's host when there is one."""
    images = "'self' blob: data:"
    if basemap:
        parts = urlsplit(basemap)
        first, dot, rest = parts.netloc.partition(".")
        host = f"*{dot}{rest}" if "{s}" in first else parts.netloc  # {s}: the tile servers a, b, c ...
        images += f" {parts.scheme}://{host}"
    return (f"default-src 'none'; script-src 'self'; style-src 'self'; img-src {images}; "
            "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


@functools.cache
def _page_template() -> str:
    return (importlib.resources.files("serving.api") / "static" / "index.html").read_text(encoding="utf-8")


def page(service: JobService, settings: Settings) -> HTMLResponse:
    config = {"model": service.model.label, "scoreThreshold": service.model.score_thr,
              "keyRequired": bool(settings.api_key or settings.keys_file), "basemap": settings.basemap,
              "basemapAttribution": settings.basemap_attribution, "colour": BRIDGE_COLOUR}
    text = _page_template()
    # "<" escaped: the JSON sits inside a <script> element
    html = text.replace("__CONFIG__", json.dumps(config).replace("<", "\\u003c"))
    return HTMLResponse(html, headers={"Content-Security-Policy": content_security_policy(settings.basemap),
                                       "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})


def install(app: FastAPI) -> None:
    """The page's scripts, styles and images (public files: they need no key)."""
    app.mount(STATIC_URL, StaticFiles(directory=static_folder()), name="static")
