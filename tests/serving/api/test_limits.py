"""Hostile and broken inputs, each answered with its status code and a message; the upload limit with
memory staying flat; the queue limit; API keys."""

from __future__ import annotations

import concurrent.futures as cf
import json

import numpy as np
import psutil
import rasterio
from affine import Affine


def _post_file(client, server, name: str, content: bytes, **data):
    return client.post(f"{server.url}/jobs", files={"file": (name, content, "image/tiff")}, data=data)


def _problem(r, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["type"] and body["title"]
    for word in words:
        assert word in body["detail"], body["detail"]
    assert "/data/" not in body["detail"]  # the server's paths are never shown


def test_hostile_uploads_get_422_with_the_reason(serve, client, tmp_path, scene_file):
    server = serve(max_pixels=10_000_000)
    _problem(_post_file(client, server, "empty.tif", b""), 422, "empty")
    _problem(_post_file(client, server, "notes.tif", b"these are not pixels\n" * 50), 422,
             "not a raster the service reads", "not recognized")

    png = tmp_path / "a.png"
    with rasterio.open(png, "w", driver="PNG", width=64, height=64, count=3, dtype="uint8") as ds:
        ds.write(np.zeros((3, 64, 64), np.uint8))
    _problem(_post_file(client, server, "a.png", png.read_bytes()), 422, "has no CRS", "gpkg")

    whole = scene_file("whole.tif", 512, 512, block=128)
    data = whole.read_bytes()
    _problem(_post_file(client, server, "cut.tif", data[: len(data) // 2]), 422, "cut.tif cannot be read to its end (truncated")

    huge = tmp_path / "huge.tif"
    with rasterio.Env(SPARSE_OK=True), rasterio.open(
            huge, "w", driver="GTiff", width=200_000, height=200_000, count=1, dtype="uint8", crs="EPSG:32631",
            transform=Affine(0.5, 0, 500000, 0, -0.5, 5800000), tiled=True, blockxsize=512, blockysize=512,
            sparse_ok=True, BIGTIFF="YES"):
        pass
    assert huge.stat().st_size < 10_000_000
    _problem(_post_file(client, server, "huge.tif", huge.read_bytes()), 422, "too large", "200000 x 200000")

    ok = scene_file("ok.tif", 200, 200).read_bytes()
    _problem(_post_file(client, server, "ok.tif", ok, bands="1,2,9"), 422, "out of range")
    _problem(_post_file(client, server, "ok.tif", ok, format="kml"), 422, "format")
    _problem(_post_file(client, server, "ok.tif", ok, model="other"), 422, "this server runs model 'tiny'")
    # nothing of the refused uploads is left behind
    assert list(server.service.settings.jobs_dir.iterdir()) == []


def test_requests_without_a_scene_or_with_a_local_href(serve, client):
    server = serve()
    _problem(client.post(f"{server.url}/jobs", files={"other": ("x.txt", b"x")}), 422, "one file")
    _problem(client.post(f"{server.url}/jobs", data={"format": "gpkg"},
                         headers={"content-type": "multipart/form-data; boundary=abc"}), 422)
    _problem(client.post(f"{server.url}/jobs", content=b"hello", headers={"content-type": "text/plain"}), 415, "multipart")
    for href in ("file:///etc/passwd", "/etc/passwd", "../../etc/passwd", "ftp://example.com/a.tif"):
        _problem(client.post(f"{server.url}/jobs", json={"href": href}), 422, "href must be an http://")
    _problem(client.post(f"{server.url}/jobs", json={"format": "gpkg"}), 422, "href")
    _problem(client.post(f"{server.url}/jobs", content=b"{not json", headers={"content-type": "application/json"}),
             422, "not JSON")


def test_unknown_job_ids_get_404(serve, client):
    server = serve()
    for job_id in ("3f1c1c5e-7c51-4a8e-9f0e-0d5c1b1a2b3c", "nope", "..%2F..%2Fetc%2Fpasswd", "%2e%2e"):
        for method in ("GET", "DELETE"):
            r = client.request(method, f"{server.url}/jobs/{job_id}")
            _problem(r, 404)
        _problem(client.get(f"{server.url}/jobs/{job_id}/results"), 404)


def test_upload_over_the_limit_gets_413_at_once_with_flat_memory(serve, upload_stream):
    limit = 8 * 2**20
    server = serve(max_upload_bytes=limit)
    me = psutil.Process()  # the server runs in this process
    upload_stream(f"{server.url}/jobs", 2 * 2**20)  # warm up the parser and buffers
    before = me.memory_info().rss
    status, body, sent = upload_stream(f"{server.url}/jobs", 96 * 2**20)  # chunked: no length to check up front
    grown = me.memory_info().rss - before
    assert status == 413 and "larger than the limit of 8,388,608 bytes" in json.loads(body)["detail"]
    assert sent < 24 * 2**20  # answered while the client was still sending, not after 96 MiB
    assert grown < 16 * 2**20, grown  # streamed to disk, never held
    assert list(server.service.settings.jobs_dir.iterdir()) == []  # the partial file is removed
    # a declared Content-Length past the limit is refused before any byte of the body is read
    status, body, sent = upload_stream(f"{server.url}/jobs", 64 * 2**20, declare_length=True)
    assert status == 413 and sent < 8 * 2**20


def test_queue_limit_answers_429_with_retry_after_and_20_concurrent_submissions(serve, client, scene_file, wait_job):
    server = serve(max_queue=6, retry_after_s=7)
    blocker = client.post(f"{server.url}/jobs", files={"file": ("big.tif", scene_file("big.tif", 1500, 1500).read_bytes())})
    wait_job(client, blocker.headers["location"], statuses=("running",))
    small = scene_file("small.tif", 200, 200).read_bytes()

    def submit(i: int):
        return client.post(f"{server.url}/jobs", files={"file": (f"s{i}.tif", small)})

    with cf.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(submit, range(20)))
    codes = [r.status_code for r in answers]
    assert set(codes) <= {202, 429}
    accepted = [r.json()["jobID"] for r in answers if r.status_code == 202]
    assert len(accepted) == 6 and len(set(accepted)) == 6  # the queue holds 6; the others were refused
    refused = [r for r in answers if r.status_code == 429]
    assert all(r.headers["retry-after"] == "7" and "try again later" in r.json()["detail"] for r in refused)
    client.delete(blocker.headers["location"])
    for job_id in accepted:
        assert wait_job(client, f"{server.url}/jobs/{job_id}")["status"] == "successful"
    listed = client.get(f"{server.url}/jobs", params={"limit": 100}).json()
    assert sorted(j["jobID"] for j in listed["jobs"]) == sorted([*accepted, blocker.json()["jobID"]])


def test_api_key_is_needed_everywhere_but_health_and_readiness(serve, client, scene_file):
    server = serve(api_key="s3cret")
    for path in ("/", "/conformance", "/processes", "/processes/detect-bridges", "/jobs", "/metrics",
                 "/jobs/3f1c1c5e-7c51-4a8e-9f0e-0d5c1b1a2b3c"):
        r = client.get(f"{server.url}{path}")
        _problem(r, 401, "X-API-Key")
        assert "www-authenticate" in r.headers
        assert client.get(f"{server.url}{path}", headers={"X-API-Key": "wrong"}).status_code == 401
    _problem(_post_file(client, server, "a.tif", scene_file("a.tif", 200, 200).read_bytes()), 401)
    assert list(server.service.settings.jobs_dir.iterdir()) == []
    for path in ("/healthz", "/readyz"):
        assert client.get(f"{server.url}{path}").status_code == 200
    key = {"X-API-Key": "s3cret"}
    assert client.get(f"{server.url}/jobs", headers=key).status_code == 200
    r = client.post(f"{server.url}/jobs", headers=key, files={"file": ("a.tif", scene_file("a.tif", 200, 200).read_bytes())})
    assert r.status_code == 202
