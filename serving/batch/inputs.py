"""Expanding the INPUTS of ``hbdnet batch`` into the scenes to run.

An input is one of:

* a raster: a local file, an ``http(s)://`` or ``s3://`` URL, or a GDAL path (``/vsicurl/...``);
* a folder: searched recursively (hidden folders skipped) for files whose extension is one of
  :data:`RASTER_EXTENSIONS`, case-insensitive, in sorted order; other files in it are ignored;
* a list file (``.txt`` / ``.list``): one path or URL per line, blank lines and lines starting with
  ``#`` ignored, relative paths taken from the list file's folder; each line is itself an input (a
  folder, a STAC file or another list works too);
* a STAC Item, Catalog, Collection or ItemCollection (``.json``, local or http(s)), read with pystac:
  every item's GeoTIFF assets (see :func:`item_scenes`), a catalog's items found recursively,
  relative hrefs resolved against the JSON's location.

Besides inputs, a STAC API item search (:class:`StacSearch`, ``--stac-search URL --bbox ...``) gives
the GeoTIFF assets of the items it finds, through pystac-client (every page).

A local file with any other extension is sniffed: JSON (first character ``{``) is read as STAC, other
text as a list file, anything else is taken as a raster (the engine reports it if it is not one).

Inputs named on the command line must exist (:class:`InputError` otherwise: a typo stops the run
before it starts). Entries of list files and STAC assets are scenes even if they do not exist: the
batch records them as failed and goes on with the others. Scenes are deduplicated by location
(local paths by their real path), keeping the first occurrence.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urljoin, urlparse

from serving.engine.gdal_errors import first_line

if TYPE_CHECKING:
    import pystac

RASTER_EXTENSIONS = (".tif", ".tiff", ".vrt", ".jp2", ".img")
LIST_EXTENSIONS = (".txt", ".list")
STAC_EXTENSIONS = (".json",)
# Asset roles that never hold the image to detect on.
_SKIP_ROLES = frozenset({"thumbnail", "overview", "metadata"})
_REMOTE_PREFIXES = ("http://", "https://", "s3://", "/vsi")
_SNIFF_BYTES = 4096


class InputError(ValueError):
    """An input that cannot be expanded into scenes; the message is one line."""


@dataclass(frozen=True)
class SceneInput:
    """One scene to run: ``uri`` is what the engine opens, ``name`` the stem its output is named after,
    ``source`` the input it came from (a STAC file, a list file, a folder, or the scene itself)."""

    uri: str
    name: str
    source: str


def is_remote(uri: str) -> bool:
    return uri.startswith(_REMOTE_PREFIXES)


def safe_name(text: str) -> str:
    """``text`` reduced to characters that are safe in a file name on every platform."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return name or "scene"


def scene_stem(uri: str) -> str:
    """The stem an output for ``uri`` is named after: the last path component without its extension,
    the rest of it whole (dots included).

    ``/vsicurl/https://host/a/b.tif?sig=x`` -> ``b``; ``/data/rotterdam_pan2_0.5m_harbour.tif`` ->
    ``rotterdam_pan2_0.5m_harbour``.
    """
    path = uri
    if path.startswith("/vsi"):
        path = re.sub(r"^(/vsi[a-z0-9_]+/)+", "", path)
    if "://" in path:
        path = unquote(urlparse(path).path)
    base = path.rstrip("/").rsplit("/", 1)[-1]
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    return safe_name(stem)


def short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def expand_inputs(inputs: Sequence[str]) -> list[SceneInput]:
    """The deduplicated scenes that ``inputs`` name, in input order (see the module docstring)."""
    scenes: list[SceneInput] = []
    seen: set[str] = set()
    for inp in inputs:
        if not is_remote(inp) and not _is_file_url(inp) and not os.path.exists(inp):
            raise InputError(f"input not found: {inp}")
        for scene in _expand(inp, source=inp, visited=set()):
            key = _dedup_key(scene.uri)
            if key not in seen:
                seen.add(key)
                scenes.append(scene)
    return scenes


def _expand(inp: str, *, source: str, visited: set[str]) -> Iterator[SceneInput]:
    if _is_file_url(inp):
        inp = _file_url_path(inp)
    if is_remote(inp):
        lower = _url_path(inp).lower()
        if lower.endswith(STAC_EXTENSIONS):
            yield from stac_scenes(inp)
        elif lower.endswith(LIST_EXTENSIONS):
            raise InputError(f"list files must be local, got {inp}")
        else:
            yield SceneInput(inp, scene_stem(inp), source)
        return
    path = os.path.abspath(inp)
    if os.path.isdir(path):
        for raster in _rasters_in(path):
            yield SceneInput(raster, scene_stem(raster), source)
        return
    kind = _local_kind(path)
    if kind == "raster":
        yield SceneInput(path, scene_stem(path), source)
        return
    real = os.path.realpath(path)
    if real in visited:  # a list that names itself (directly or through another list)
        raise InputError(f"list or STAC file {inp} includes itself")
    visited = visited | {real}
    if kind == "stac":
        yield from stac_scenes(path)
    else:
        for entry in read_list(path):
            if not is_remote(entry) and not os.path.exists(entry):
                # A missing entry is a scene that will fail, not a reason to stop the whole batch.
                yield SceneInput(entry, scene_stem(entry), path)
            else:
                yield from _expand(entry, source=path, visited=visited)


def _local_kind(path: str) -> str:
    """"raster", "stac" or "list" for an existing local file (or a missing one: "raster")."""
    lower = path.lower()
    if lower.endswith(RASTER_EXTENSIONS) or not os.path.isfile(path):
        return "raster"
    if lower.endswith(STAC_EXTENSIONS):
        return "stac"
    if lower.endswith(LIST_EXTENSIONS):
        return "list"
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if b"\0" in head:
        return "raster"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character may be cut at the end of the sample; anything else is binary.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return "raster"
    return "stac" if text.lstrip().startswith("{") else "list"


def _rasters_in(folder: str) -> list[str]:
    found: list[str] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, f) for f in sorted(files)
                     if f.lower().endswith(RASTER_EXTENSIONS) and not f.startswith("."))
    return sorted(found)


def read_list(path: str) -> list[str]:
    """The entries of a list file: one per line, ``#`` comment lines and blank lines skipped, local
    relative paths made absolute against the list file's folder."""
    base = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read list file {path}: {exc}") from exc
    entries: list[str] = []
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if _is_file_url(entry):
            entry = _file_url_path(entry)
        if not is_remote(entry):
            entry = os.path.normpath(os.path.join(base, os.path.expanduser(entry)))
        entries.append(entry)
    return entries


def stac_scenes(href: str) -> list[SceneInput]:
    """The scenes of a STAC Item, Catalog, Collection or ItemCollection at ``href`` (path or URL)."""
    import pystac
    from pystac.errors import STACError, STACTypeError

    try:
        data = pystac.StacIO.default().read_json(href)
    except Exception as exc:  # pystac surfaces file, network and JSON errors as assorted types
        raise InputError(f"cannot read STAC file {href}: {first_line(exc)}") from exc
    if not isinstance(data, dict):
        raise InputError(f"{href} is not a STAC Item, Catalog, Collection or ItemCollection")
    try:
        if data.get("type") == "FeatureCollection":
            items: Iterable[pystac.Item] = pystac.ItemCollection.from_dict(data, preserve_dict=False).items
        else:
            obj = pystac.read_dict(data, href=href)
            if isinstance(obj, pystac.Item):
                items = [obj]
            elif isinstance(obj, pystac.Catalog):  # Collections are Catalogs
                items = list(obj.get_items(recursive=True))
            else:
                raise InputError(f"{href} is a STAC {type(obj).__name__}; expected an Item, Catalog or Collection")
    except (STACError, STACTypeError, KeyError, ValueError, OSError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{href} is not a readable STAC Item, Catalog, Collection or ItemCollection: "
                         f"{first_line(exc)}") from exc
    scenes: list[SceneInput] = []
    for item in items:
        scenes.extend(item_scenes(item, base=href))
    return scenes


@dataclass(frozen=True)
class StacSearch:
    """A STAC API item search (``hbdnet batch --stac-search``): the API's root URL and the search's
    parameters (``bbox`` in WGS84 degrees: minx, miny, maxx, maxy; ``collections``; ``datetime`` as
    STAC writes it: one instant or ``start/end``); at most ``max_items`` items."""

    url: str
    bbox: tuple[float, float, float, float] | None = None
    collections: tuple[str, ...] = ()
    datetime: str | None = None
    max_items: int = 100


def stac_search_scenes(search: StacSearch) -> list[SceneInput]:
    """The GeoTIFF assets (``item_scenes``) of the items a STAC API search finds, every page of them
    (pystac-client), in the order the API gives. ``InputError`` (one line) for an API that cannot be
    reached, is not a STAC API with item search, or refuses the search."""
    from pystac_client import Client
    from pystac_client.stac_api_io import StacApiIO

    try:
        client = Client.open(search.url, stac_io=StacApiIO(timeout=60))
        found = client.search(bbox=search.bbox, collections=list(search.collections) or None,
                              datetime=search.datetime, max_items=search.max_items)
        items = list(found.items())
    except Exception as exc:  # pystac-client passes on requests', pystac's and its own errors
        raise InputError(f"STAC search at {search.url} failed: {type(exc).__name__}: {first_line(exc)}") from exc
    scenes: list[SceneInput] = []
    for item in items:
        scenes.extend(item_scenes(item, base=search.url))
    return scenes


def item_scenes(item: pystac.Item, *, base: str) -> list[SceneInput]:
    """The GeoTIFF assets of a STAC item as scenes.

    An asset qualifies when its media type is a TIFF (``image/tiff``, with or without
    ``application=geotiff`` / ``profile=cloud-optimized``) or, without a media type, when its href
    ends in ``.tif`` / ``.tiff``; assets with a thumbnail, overview or metadata role never do. When
    some qualifying asset is the item's ``visual`` one (key or role), only those are taken: the
    rendered RGB is what the detector sees best, and per-band assets of the same item would
    otherwise each run as a separate scene. A single asset is named after the item id, several
    after ``<item id>-<asset key>``.
    """
    chosen: list[tuple[str, str, bool]] = []  # (asset key, uri, is the visual asset)
    for key, asset in item.assets.items():
        if set(asset.roles or ()) & _SKIP_ROLES:
            continue
        media = (asset.media_type or "").lower()
        href = asset.get_absolute_href() or asset.href
        if media:
            if not (media.startswith("image/tiff") or media.startswith("image/vnd.stac.geotiff")):
                continue
        elif not _url_path(href).lower().endswith((".tif", ".tiff")):
            continue
        visual = key == "visual" or "visual" in (asset.roles or ())
        chosen.append((key, _resolve(href, base), visual))
    if any(visual for _, _, visual in chosen):
        chosen = [c for c in chosen if c[2]]
    single = len(chosen) == 1
    return [SceneInput(uri, safe_name(item.id if single else f"{item.id}-{key}"), base)
            for key, uri, _ in chosen]


def _resolve(href: str, base: str) -> str:
    """``href`` as a location the engine opens: absolute, relative hrefs taken from ``base``'s folder."""
    if _is_file_url(href):
        return _file_url_path(href)
    if is_remote(href) or "://" in href or os.path.isabs(href):
        return href
    if is_remote(base):
        return urljoin(base, href)
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(base)), href))


def _dedup_key(uri: str) -> str:
    return uri if is_remote(uri) else os.path.realpath(uri)


def _is_file_url(text: str) -> bool:
    return text.startswith("file://")


def _file_url_path(url: str) -> str:
    return unquote(urlparse(url).path)


def _url_path(uri: str) -> str:
    return unquote(urlparse(uri).path) if "://" in uri else uri
