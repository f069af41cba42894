"""The whole flow over real HTTP: POST a GeoTIFF, progress that moves, results in three formats that lie
where the scene is; the job service's records and the API answering while a job runs."""

from __future__ import annotations

import time

import numpy as np
import pyogrio.raw
import shapely
import shapely.affinity
from pyproj import Transformer


def _footprint(height: int, width: int, to_wgs84: bool) -> shapely.Polygon:
    """The scene's extent (in lon/lat: the envelope of its corners, a hair larger)."""
    x0, y1 = 500000.0, 5800000.0
    x1, y0 = x0 + width * 0.5, y1 - height * 0.5
    if not to_wgs84:
        return shapely.box(x0, y0, x1, y1)
    t = Transformer.from_crs("EPSG:32631", "EPSG:4326", always_xy=True)
    xs, ys = t.transform([x0, x1, x1, x0], [y0, y0, y1, y1])
    return shapely.box(min(xs), min(ys), max(xs), max(ys)).buffer(1e-7)


def test_post_poll_results_in_three_formats(serve, client, scene_file, wait_job, tmp_path):
    server = serve()
    h, w = 1100, 1000
    scene = scene_file("harbour.scene.tif", h, w)
    with open(scene, "rb") as f:
        r = client.post(f"{server.url}/jobs", files={"file": ("harbour.scene.tif", f, "image/tiff")},
                        data={"score_threshold": "0"})
    assert r.status_code == 202, r.text
    doc = r.json()
    assert r.headers["location"] == f"{server.url}/jobs/{doc['jobID']}"
    assert doc["status"] in ("accepted", "running") and doc["type"] == "process"

    seen, slowest = [], 0.0
    while True:
        t = time.perf_counter()
        doc = client.get(r.headers["location"]).json()
        slowest = max(slowest, time.perf_counter() - t)
        seen.append((doc["status"], doc["progress"], (doc.get("windows") or {}).get("done")))
        if doc["status"] in ("successful", "failed"):
            break
        time.sleep(0.03)
    assert doc["status"] == "successful", doc
    moving = {p for s, p, _ in seen if s == "running" and 0 < p < 100}
    assert len(moving) >= 2, seen  # progress moves as windows complete, not 0 then 100
    assert slowest < 1.0  # the API answers while the model runs
    assert doc["windows"]["done"] == doc["windows"]["total"] > 100 and doc["progress"] == 100
    assert {"queued", "run", "stream", "merge"} <= set(doc["timings"])
    assert doc["detections"] > 0  # random weights and threshold 0: the tiny model fires
    assert {link["rel"] for link in doc["links"]} >= {"self", "http://www.opengis.net/def/rel/ogc/1.0/results"}

    for fmt, media in (("geojson", "application/geo+json"), ("gpkg", "application/geopackage+sqlite3"),
                       ("fgb", "application/flatgeobuf")):
        res = client.get(f"{server.url}/jobs/{doc['jobID']}/results", params=None if fmt == "geojson" else {"f": fmt})
        assert res.status_code == 200 and res.headers["content-type"].startswith(media)
        assert f'filename="harbour.scene_bridges.{fmt}"' in res.headers["content-disposition"]
        path = tmp_path / f"out.{fmt}"
        path.write_bytes(res.content)
        meta, _, geometry, fields = pyogrio.raw.read(path, layer="bridges" if fmt == "gpkg" else None)
        assert len(geometry) == doc["detections"]
        geoms = shapely.from_wkb(geometry)
        # every bridge's centre is on the scene, and the bridges cover it (not a corner of it)
        centres = shapely.centroid(geoms)
        footprint = _footprint(h, w, fmt == "geojson")
        inside = shapely.within(centres, footprint)
        assert inside.mean() > 0.95, fmt  # a random model's boxes at the edges may be centred just outside
        near = shapely.affinity.scale(footprint, 1.2, 1.2)
        assert shapely.within(centres, near).all(), fmt
        assert shapely.union_all(geoms).intersection(footprint).area > 0.5 * footprint.area, fmt
        names = list(meta["fields"])
        assert np.all(np.asarray(fields[names.index("score")]) >= 0)
        assert set(fields[names.index("scene")]) == {"harbour.scene.tif"}  # the client's name, not a server path
        if fmt == "gpkg":
            assert "layer_styles" in [name for name, _ in pyogrio.list_layers(path)]
    assert client.get(f"{server.url}/jobs/{doc['jobID']}/results", params={"f": "qml"}).text.startswith("<")
    assert not server.service.input_path(doc["jobID"]).exists()  # the upload is deleted once the results are written

    listing = client.get(f"{server.url}/jobs").json()
    assert [j["jobID"] for j in listing["jobs"]] == [doc["jobID"]] and listing["numberMatched"] == 1

    metrics = client.get(f"{server.url}/metrics").text
    assert 'hbdnet_jobs{state="successful"} 1.0' in metrics
    assert f"hbdnet_windows_processed_total {float(doc['windows']['total'])}" in metrics
    assert "hbdnet_queue_length 0.0" in metrics and "hbdnet_window_seconds_count" in metrics
    assert client.get(f"{server.url}/readyz").json() == {"ready": True,
                                                         "checks": {"model": True, "workers": True, "store": True}}


def test_results_404_before_success_and_jobs_paged_newest_first(serve, client, scene_file, wait_job):
    server = serve()
    scene = scene_file("a.tif", 1000, 1000).read_bytes()
    ids = []
    for i in range(3):
        r = client.post(f"{server.url}/jobs", files={"file": (f"s{i}.tif", scene)}, data={"format": "fgb"})
        assert r.status_code == 202
        ids.append(r.json()["jobID"])
    last = client.get(f"{server.url}/jobs/{ids[-1]}/results")
    assert last.status_code == 404 and "no results" in last.json()["detail"]
    page = client.get(f"{server.url}/jobs", params={"limit": 2}).json()
    assert [j["jobID"] for j in page["jobs"]] == ids[::-1][:2] and page["numberMatched"] == 3
    nxt = [link["href"] for link in page["links"] if link["rel"] == "next"]
    assert [j["jobID"] for j in client.get(nxt[0]).json()["jobs"]] == ids[:1]
    for job_id in ids:
        assert wait_job(client, f"{server.url}/jobs/{job_id}")["status"] == "successful"
    r = client.get(f"{server.url}/jobs/{ids[0]}/results")  # the job's own format by default
    assert r.headers["content-type"].startswith("application/flatgeobuf")


def test_job_timeout_fails_the_job_in_words(serve, client, scene_file, wait_job):
    server = serve(job_timeout_s=0.3)
    r = client.post(f"{server.url}/jobs", files={"file": ("big.tif", scene_file("big.tif", 1500, 1500).read_bytes())})
    doc = wait_job(client, r.headers["location"])
    assert doc["status"] == "failed"
    assert doc["message"].startswith("the job ran longer than the limit of 0.3 s") and "windows done" in doc["message"]
