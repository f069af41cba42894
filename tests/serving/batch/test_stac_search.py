"""``hbdnet batch --stac-search URL --bbox ...`` (issue 21, part 2): the items a STAC API item search
finds, every page of them, run as scenes, and the search's bbox the area of interest searched in each.
Against a real HTTP server on loopback that speaks the STAC API item search (GET and POST, paged)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pyogrio
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer

from serving.cli.main import main
from serving.model_ref import model_ref
from serving.testing.servers import free_port
from serving.testing.simulate import PerfectSpec

UTM = "EPSG:32631"
# Each scene: 2000 x 1000 px at 0.5 m; scene k's top-left corner 2 km east of scene k-1's.
WIDTH, HEIGHT = 2000, 1000
# One bridge in the west half of each scene, one in the east half (scene pixels).
TRUTH = np.array([[400.0, 500.0, 200.0, 14.0, 0.2], [1600.0, 500.0, 200.0, 14.0, -0.3]])


def write_scene(path, k: int):
    transform = Affine(0.5, 0, 500000.0 + 2000 * k, 0, -0.5, 5800000.0)
    with rasterio.open(path, "w", driver="GTiff", width=WIDTH, height=HEIGHT, count=3, dtype="uint8", crs=UTM,
                       transform=transform, tiled=True, blockxsize=256, blockysize=256) as ds:
        ds.write(np.random.default_rng(k).integers(0, 200, (3, HEIGHT, WIDTH)).astype("uint8"))
    return path


def lonlat(x: float, y: float) -> tuple[float, float]:
    return Transformer.from_crs(UTM, "EPSG:4326", always_xy=True).transform(x, y)


def item(k: int, href: str) -> dict:
    (w, s), (e, n) = lonlat(500000 + 2000 * k, 5799500), lonlat(501000 + 2000 * k, 5800000)
    return {"type": "Feature", "stac_version": "1.0.0", "id": f"scene-{k}", "bbox": [w, s, e, n],
            "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
            "properties": {"datetime": "2026-06-01T00:00:00Z"}, "links": [],
            "assets": {"visual": {"href": href, "type": "image/tiff; application=geotiff", "roles": ["visual"]},
                       "thumbnail": {"href": href + ".png", "type": "image/png", "roles": ["thumbnail"]}}}


class StacApi:
    """A STAC API on loopback: a landing page that conforms to item search, and ``/search`` (GET or
    POST) answering one item a page with a ``next`` link. ``searches`` records each search's bbox."""

    def __init__(self, items: list[dict]):
        self.items, self.searches = items, []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, doc: dict) -> None:
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                parts = urlsplit(self.path)
                if parts.path in ("", "/"):
                    return self._send(api.landing())
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                return self._send(api.page(query.get("bbox"), int(query.get("page", 1)), "GET"))

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                bbox = ",".join(str(v) for v in body["bbox"]) if body.get("bbox") else None
                return self._send(api.page(bbox, int(body.get("page", 1)), "POST", body))

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def landing(self) -> dict:
        return {"type": "Catalog", "stac_version": "1.0.0", "id": "api", "description": "test API",
                "conformsTo": ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"],
                "links": [{"rel": "self", "href": self.url + "/"}, {"rel": "root", "href": self.url + "/"},
                          {"rel": "search", "href": self.url + "/search", "type": "application/geo+json",
                           "method": "GET"},
                          {"rel": "search", "href": self.url + "/search", "type": "application/geo+json",
                           "method": "POST"}]}

    def page(self, bbox: str | None, page: int, method: str, body: dict | None = None) -> dict:
        self.searches.append(bbox)
        links = []
        if page < len(self.items):
            if method == "GET":
                links.append({"rel": "next", "href": f"{self.url}/search?bbox={bbox}&page={page + 1}"})
            else:
                links.append({"rel": "next", "href": f"{self.url}/search", "method": "POST",
                              "body": {**(body or {}), "page": page + 1}})
        return {"type": "FeatureCollection", "features": self.items[page - 1:page], "links": links}


@pytest.fixture
def api(tmp_path):
    scenes = [write_scene(tmp_path / f"scene{k}.tif", k) for k in range(2)]
    server = StacApi([item(k, str(path)) for k, path in enumerate(scenes)])
    yield server
    server.server.shutdown()


@pytest.fixture
def perfect(monkeypatch):
    from serving.cli import batch as batch_cli

    ref = model_ref(PerfectSpec(TRUTH), window=512, overlap=100)
    monkeypatch.setattr(batch_cli, "resolve_model", lambda *args, **kwargs: ref)
    return ref


def test_a_stac_search_runs_every_page_and_its_bbox_is_the_area_searched(api, perfect, tmp_path, capsys):
    # the west half of both scenes: x 500000..501000 (scene 0) and 502000..503000 (scene 1), all rows
    (w, s), (_, n) = lonlat(500000, 5799500), lonlat(503000, 5800000)
    west_e = lonlat(500500, 5800000)[0]  # scene 0's west half ends at 500500 (x pixel 1000)
    bbox = f"{w},{s},{west_e},{n}"
    out = tmp_path / "out"
    code = main(["batch", "--stac-search", api.url, "--bbox", bbox, "-o", str(out), "--workers", "0", "-q"])
    err = capsys.readouterr()
    assert code == 0, err.err
    assert "STAC search found 2 scenes" in err.err
    assert len(api.searches) == 2 and api.searches[0] is not None  # two pages, the bbox sent with each
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    done = {r["scene"]: r for r in rows if r.get("status") == "ok"}
    assert len(done) == 2, rows
    # scene 0: its west bridge found, the east one outside the bbox never read or dropped;
    # scene 1 lies wholly east of the bbox: nothing searched there
    layer0 = out / next(Path(r["output"]).name for r in done.values() if "scene0" in r["scene"])
    _, _, _, fields = pyogrio.raw.read(layer0, columns=["cx_px"])
    assert len(fields[0]) == 1 and fields[0][0] == pytest.approx(400, abs=2)
    info = pyogrio.read_info(layer0)
    assert "searched within the area of interest" in info["layer_metadata"]["DESCRIPTION"]
    assert f"{west_e:.10g}" in info["layer_metadata"]["DESCRIPTION"]  # the bbox as given, not rounded
    layer1 = out / next(Path(r["output"]).name for r in done.values() if "scene1" in r["scene"])
    assert pyogrio.read_info(layer1)["features"] == 0


def test_a_search_that_fails_is_one_line(perfect, tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens
    assert main(["batch", "--stac-search", url, "-o", str(tmp_path / "o"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"hbdnet batch: error: STAC search at {url} failed: "), err
    assert main(["batch", "--bbox", "1,2,3,4", "x.tif", "-o", str(tmp_path / "o"), "-q"]) == 2
    assert "--bbox, --collections and --datetime narrow a --stac-search" in capsys.readouterr().err



