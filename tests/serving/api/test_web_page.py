"""The web page over HTTP (the browser tests are ``test_web_page_browser.py``): ``/`` is the page for a
browser and the OGC landing document for a client; the page and its files need no key, load nothing
from another host, and say so in their Content-Security-Policy; a finished job's quicklook."""

from __future__ import annotations

import re
import time

import pytest
import rasterio

from serving.api.webpage import check_basemap, content_security_policy

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


@pytest.mark.parametrize(("accept", "query", "html"), [
    (BROWSER, "", True),
    ("*/*", "", False),  # curl, requests, OWSLib
    ("application/json", "", False),
    ("application/json, text/html;q=0.5", "", False),
    ("text/html;q=0.9, application/json", "", False),
    (BROWSER, "?f=json", False),
    ("application/json", "?f=html", True),
    ("", "", False),
])
def test_the_landing_route_answers_a_browser_with_the_page_and_a_client_with_json(serve, client, accept, query,
                                                                                   html):
    server = serve()
    r = client.get(f"{server.url}/{query}", headers={"Accept": accept})
    assert r.status_code == 200
    if html:
        assert r.headers["content-type"].startswith("text/html") and "<title>hbdnet" in r.text
    else:
        assert r.headers["content-type"] == "application/json" and r.json()["links"]


def test_the_page_needs_no_key_but_the_landing_document_does(serve, client):
    server = serve(api_key="s3cret-key-for-the-page")
    assert client.get(f"{server.url}/", headers={"Accept": BROWSER}).status_code == 200
    assert client.get(f"{server.url}/static/hbdnet.js").status_code == 200
    assert client.get(f"{server.url}/", headers={"Accept": "application/json"}).status_code == 401
    assert client.get(f"{server.url}/?f=json", headers={"Accept": BROWSER}).status_code == 401
    ok = client.get(f"{server.url}/", headers={"Accept": "application/json", "X-API-Key": "s3cret-key-for-the-page"})
    assert ok.status_code == 200 and ok.json()["links"]
    config = _config(client.get(f"{server.url}/?f=html").text)
    assert config["keyRequired"] is True and "s3cret" not in str(config)


def _config(page: str) -> dict:
    import json

    return json.loads(re.search(r'<script id="hbdnet-config" type="application/json">(.*?)</script>', page).group(1))


def test_the_page_loads_everything_from_the_server_itself(serve, client):
    server = serve()
    r = client.get(f"{server.url}/?f=html")
    page = r.text
    assert not re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+", page), "a URL to another host"
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", page)
    kinds = {"js": "javascript", "css": "text/css"}
    assert {ref.rsplit(".", 1)[-1] for ref in refs if not ref.startswith("data:")} == set(kinds), refs
    for ref in refs:
        if ref.startswith("data:"):
            continue
        asset = client.get(f"{server.url}/{ref}")  # relative: the page works under a proxy's prefix too
        assert asset.status_code == 200 and kinds[ref.rsplit(".", 1)[-1]] in asset.headers["content-type"], ref
    css = client.get(f"{server.url}/static/vendor/leaflet/leaflet.css").text
    for image in re.findall(r"url\((images/[^)]+)\)", css):
        assert client.get(f"{server.url}/static/vendor/leaflet/{image}").status_code == 200, image
    for script in ("static/hbdnet.js", "static/vendor/leaflet/leaflet.js"):
        text = client.get(f"{server.url}/{script}").text
        assert not re.findall(r"https?://(?!www\.w3\.org|leafletjs\.com|github\.com|openstreetmap)[A-Za-z0-9.-]+",
                              text), script
    assert client.get(f"{server.url}/static/vendor/leaflet/LICENSE").text.startswith("BSD 2-Clause License")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert _config(page) == {"model": server.service.model.label, "scoreThreshold": None, "keyRequired": False,
                             "basemap": None, "basemapAttribution": None, "colour": "#ff4500"}


def test_a_basemap_is_allowed_in_the_policy_and_checked(serve, client):
    template = "https://{s}.tile.example.org/{z}/{x}/{y}.png"
    server = serve(basemap=template, basemap_attribution="© Example")
    r = client.get(f"{server.url}/?f=html")
    assert _config(r.text)["basemap"] == template
    assert "img-src 'self' blob: data: https://*.tile.example.org" in r.headers["content-security-policy"]
    assert content_security_policy("https://tiles.example.org/{z}/{x}/{y}.png").count("https://tiles.example.org") == 1
    with pytest.raises(ValueError, match="tile URL"):
        check_basemap("https://tiles.example.org/tile.png")
    with pytest.raises(ValueError, match="tile URL"):
        check_basemap("file:///{z}/{x}/{y}.png")


def test_a_finished_job_has_a_quicklook_over_its_scene(serve, client, scene_file, wait_job):
    from pyproj import Transformer

    server = serve()
    path = scene_file("s.tif", 600, 400)
    r = client.post(f"{server.url}/jobs", files={"file": ("s.tif", path.read_bytes())})
    url = r.headers["location"]
    assert client.get(f"{url}/quicklook").status_code in (404, 200)  # 404 until the job is done
    assert wait_job(client, url)["status"] == "successful"
    doc = client.get(f"{url}/quicklook").json()
    with rasterio.open(path) as ds:
        to_lonlat = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True)
        corners = [to_lonlat.transform(*(ds.transform @ (c, r))) for c in (0, ds.width) for r in (0, ds.height)]
    lons, lats = zip(*corners)
    west, south, east, north = doc["bbox"]
    # the bbox hugs the scene's corners, to a pixel of the quicklook
    px, py = (east - west) / doc["width"], (north - south) / doc["height"]
    assert abs(west - min(lons)) < px and abs(east - max(lons)) < px
    assert abs(south - min(lats)) < py and abs(north - max(lats)) < py
    png = client.get(doc["href"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    with rasterio.MemoryFile(png.content) as mem, mem.open() as ql:
        assert (ql.count, ql.width, ql.height) == (4, doc["width"], doc["height"])
        assert max(ql.width, ql.height) <= 1024 and ql.read(4).max() == 255
    assert client.delete(url).status_code == 200
    assert client.get(f"{url}/quicklook").status_code == 404


def test_a_scene_without_a_crs_has_no_quicklook_and_says_why(serve, client, scene_file, wait_job):
    server = serve()
    path = scene_file("plain.tif", 300, 300, crs=None)
    url = client.post(f"{server.url}/jobs?format=gpkg", files={"file": ("plain.tif", path.read_bytes())}).headers[
        "location"]
    assert wait_job(client, url)["status"] == "successful"
    r = client.get(f"{url}/quicklook")
    assert r.status_code == 404 and "no CRS" in r.json()["detail"]
    assert client.get(f"{url}/quicklook.png").status_code == 404


def test_an_expired_jobs_quicklook_is_gone(serve, client, scene_file, wait_job):
    server = serve(keep_results_s=0.3)
    url = client.post(f"{server.url}/jobs", files={"file": ("s.tif", scene_file("s.tif", 300, 300).read_bytes())}
                      ).headers["location"]
    assert wait_job(client, url)["status"] == "successful"
    deadline = time.monotonic() + 30
    while not client.get(url).json().get("expired"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert client.get(f"{url}/quicklook").status_code == 410
    assert client.get(f"{url}/quicklook.png").status_code == 410


def test_the_job_document_names_the_scene_as_the_client_did(serve, client, scene_file, wait_job):
    server = serve()
    r = client.post(f"{server.url}/jobs", files={"file": ("my scene.tif", scene_file("a.tif", 300, 300).read_bytes())})
    assert r.json()["scene"] == "my scene.tif"
    assert client.get(f"{server.url}/jobs").json()["jobs"][0]["scene"] == "my scene.tif"
