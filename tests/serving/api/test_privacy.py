"""Nothing private in what the service answers or writes (issue 19, item 5): no server path in a job's
notes or errors, no credentials or signing parameters of an href in the job, its results or their
names, the client's file name kept whatever the order of the form parts, GDAL's real reason kept, a
clear answer to ``score_threshold=nan``. Over real HTTP, hrefs against ``file_server.py``."""

from __future__ import annotations

import json

import pytest

from tests.serving.api.test_remote_scenes import FileServer

SECRETS = ("pa55word", "s3cr3t", "AKIAEXAMPLE", "t0k3n", "s1gn4ture")


@pytest.fixture
def files(tmp_path) -> FileServer:
    server = FileServer(tmp_path / "www")
    yield server
    server.close()


def _multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body with the parts in this order, as curl ``-F`` sends them."""
    boundary = "hbdnetprivacy42"
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_the_readme_curl_keeps_the_file_name(serve, client, scene_file, wait_job):
    """``curl -F file=@scene.tif -F score_threshold=0``: a field after the file must not reset its name."""
    server = serve()
    body, ctype = _multipart([("file", "harbour.tif", scene_file("harbour.tif", 300, 300).read_bytes()),
                              ("score_threshold", None, b"0")])
    r = client.post(f"{server.url}/jobs", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 202, r.text
    doc = wait_job(client, r.headers["location"])
    assert doc["status"] == "successful" and doc["detections"] > 0, doc
    res = client.get(f"{server.url}/jobs/{doc['jobID']}/results")
    assert 'filename="harbour_bridges.geojson"' in res.headers["content-disposition"], res.headers
    assert {f["properties"]["scene"] for f in res.json()["features"]} == {"harbour.tif"}


def test_notes_name_the_clients_file_never_a_server_path(serve, client, scene_file, wait_job, tmp_path):
    server = serve()
    striped = scene_file("striped.tif", 300, 300)
    import rasterio

    with rasterio.open(striped) as src:  # the same pixels, written in strips
        profile = {**src.profile, "tiled": False, "blockysize": 8}
        profile.pop("blockxsize")
        data = src.read()
    with rasterio.open(striped, "w", **profile) as dst:
        dst.write(data)
    r = client.post(f"{server.url}/jobs", files={"file": ("my scene.tif", striped.read_bytes())})
    doc = wait_job(client, r.headers["location"])
    assert doc["status"] == "successful", doc
    assert any(n.startswith("my scene.tif is striped") for n in doc["notes"]), doc["notes"]
    text = json.dumps({k: v for k, v in doc.items() if k != "links"})
    for leak in (str(tmp_path), "/jobs/", "input"):
        assert leak not in text, (leak, text)


def test_credentials_and_signing_parameters_are_never_shown(serve, client, scene_file, files, wait_job):
    """The href is fetched as given, but its user info and presigned query parameters appear nowhere:
    not in the job document, the results (GeoPackage description, ``scene`` attribute), their names."""
    files.put("scene.tif", scene_file("scene.tif", 300, 300).read_bytes())
    query = "X-Amz-Signature=s3cr3t&X-Amz-Credential=AKIAEXAMPLE&token=t0k3n&sig=s1gn4ture&band=red"
    href = f"http://user:pa55word@127.0.0.1:{files.port}/scene.tif?{query}"
    server = serve(allow_href_hosts=["127.0.0.1"])
    r = client.post(f"{server.url}/jobs", json={"href": href, "format": "gpkg", "score_threshold": 0})
    assert r.status_code == 202, r.text
    doc = wait_job(client, r.headers["location"])
    assert doc["status"] == "successful" and doc["detections"] > 0, doc
    shown = f"http://127.0.0.1:{files.port}/scene.tif?band=red"
    answers = [r.text, json.dumps(doc), client.get(f"{server.url}/jobs").text]
    for fmt in ("gpkg", "geojson", "fgb"):
        res = client.get(f"{server.url}/jobs/{doc['jobID']}/results", params={"f": fmt})
        assert res.status_code == 200
        answers += [res.headers["content-disposition"], res.content.decode("latin-1")]
        if fmt == "geojson":
            assert {f["properties"]["scene"] for f in res.json()["features"]} == {shown}
    for answer in answers:
        for secret in (*SECRETS, "user:"):
            assert secret not in answer, (secret, answer[:300])

    missing = client.post(f"{server.url}/jobs", json={"href": href.replace("scene.tif", "gone.tif")})
    assert missing.status_code == 422, missing.text
    assert f"127.0.0.1:{files.port}/gone.tif" in missing.json()["detail"]
    for secret in (*SECRETS, "user:", "vsicurl"):
        assert secret not in missing.text, (secret, missing.text)


def test_gdals_own_reason_is_kept(serve, client, scene_file, files):
    """A server without range requests: GDAL said why, and the client hears it."""
    files.put("scene.tif", scene_file("scene.tif", 1500, 1500).read_bytes())
    (files.folder / "scene.tif.norange").touch()
    server = serve(allow_href_hosts=["127.0.0.1"])
    r = client.post(f"{server.url}/jobs", json={"href": f"{files.url}/scene.tif"})
    assert r.status_code == 422, r.text
    assert "Range downloading not supported by this server" in r.json()["detail"], r.text
    assert "vsicurl" not in r.text


@pytest.mark.parametrize("how", ["form", "query", "json"])
def test_a_nan_score_threshold_says_so(serve, client, scene_file, how):
    server = serve()
    scene = scene_file("scene.tif", 300, 300).read_bytes()
    if how == "form":
        r = client.post(f"{server.url}/jobs", files={"file": ("scene.tif", scene)}, data={"score_threshold": "nan"})
    elif how == "query":
        r = client.post(f"{server.url}/jobs?score_threshold=NaN", files={"file": ("scene.tif", scene)})
    else:
        r = client.post(f"{server.url}/jobs", content=b'{"href": "https://example.com/a.tif", "score_threshold": NaN}',
                        headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "score_threshold" in detail and "finite" in detail and "less than" not in detail, detail
