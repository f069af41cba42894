"""OGC API - Processes as clients use it (issue 19, item 8): ``response`` raw or document and the output's
media type and transmission mode honoured, synchronously and asynchronously (OWSLib's ``execute`` gets
JSON), ``no-such-process`` for another process, one rule for 400 and 422, the OpenAPI version claimed as
served, and the scene inline as base64."""

from __future__ import annotations

import base64
import json

import pytest

from tests.serving.api.test_ogc import validate

EXECUTION = "/processes/detect-bridges/execution"
GPKG = "application/geopackage+sqlite3"
FGB = "application/flatgeobuf"
EXCEPTIONS = "http://www.opengis.net/def/exceptions/ogcapi-processes-1/1.0/"


@pytest.fixture
def remote(serve, scene_file, static_server):
    """A server that may fetch from loopback, and the URL of a small scene served there."""
    server = serve(allow_href_hosts=["127.0.0.1"])
    href = f"{static_server(scene_file('remote.tif', 400, 300).parent)}/remote.tif"
    return server, href


def test_owslib_execute_gets_a_results_document(remote):
    owslib = pytest.importorskip("owslib.ogcapi.processes")
    server, href = remote
    api = owslib.Processes(server.url)
    doc = api.execute("detect-bridges", inputs={"image": {"href": href}},
                      outputs={"bridges": {"format": {"mediaType": GPKG}}})  # response "document", as OWSLib sends
    validate(doc, "results.yaml")
    assert doc["bridges"]["mediaType"] == GPKG and doc["bridges"]["encoding"] == "base64"
    assert base64.b64decode(doc["bridges"]["value"]).startswith(b"SQLite format 3")


def test_response_and_output_format(remote, client, wait_job):
    server, href = remote
    url = server.url + EXECUTION
    inputs = {"image": {"href": href}, "score_threshold": 0.0}

    # document, GeoJSON by value: the FeatureCollection itself
    doc = client.post(url, json={"inputs": inputs, "response": "document"})
    assert doc.status_code == 200 and doc.headers["content-type"].startswith("application/json"), doc.text
    validate(doc.json(), "results.yaml")
    bridges = doc.json()["bridges"]
    assert bridges["mediaType"] == "application/geo+json" and bridges["value"]["type"] == "FeatureCollection"

    # document, FlatGeobuf by reference: a link that serves the file
    ref = client.post(url, json={"inputs": inputs, "response": "document", "outputs": {
        "bridges": {"format": {"mediaType": FGB}, "transmissionMode": "reference"}}})
    assert ref.status_code == 200, ref.text
    validate(ref.json(), "results.yaml")
    link = ref.json()["bridges"]
    assert link["type"] == FGB and "value" not in link
    assert client.get(link["href"]).content.startswith(b"fgb")

    # raw (the default): the file in the media type asked for
    raw = client.post(url, json={"inputs": inputs, "outputs": {"bridges": {"format": {"mediaType": FGB}}}})
    assert raw.status_code == 200 and raw.headers["content-type"] == FGB and raw.content.startswith(b"fgb")
    # raw by reference: 204, the output's link in the Link header
    raw_ref = client.post(url, json={"inputs": inputs, "response": "raw", "outputs": {
        "bridges": {"format": {"mediaType": GPKG}, "transmissionMode": "reference"}}})
    assert raw_ref.status_code == 204 and not raw_ref.content, raw_ref.text
    results_links = [part for part in raw_ref.headers["link"].split(",") if "/1.0/results" in part]
    target = results_links[0].split(";")[0].strip("<> ")
    assert client.get(target).content.startswith(b"SQLite format 3")

    # asynchronous: the job's results are what the execute request asked for
    r = client.post(url, headers={"Prefer": "respond-async"}, json={
        "inputs": inputs, "response": "document", "outputs": {"bridges": {"format": {"mediaType": GPKG}}}})
    assert r.status_code == 201, r.text
    assert wait_job(client, r.headers["location"])["status"] == "successful"
    results = client.get(r.headers["location"] + "/results")
    assert results.headers["content-type"].startswith("application/json"), results.headers
    validate(results.json(), "results.yaml")
    assert base64.b64decode(results.json()["bridges"]["value"]).startswith(b"SQLite format 3")
    assert client.get(r.headers["location"] + "/results", params={"f": "gpkg"}).content.startswith(b"SQLite")

    r = client.post(url, headers={"Prefer": "respond-async"}, json={
        "inputs": inputs, "response": "raw", "outputs": {"bridges": {"format": {"mediaType": GPKG}}}})
    wait_job(client, r.headers["location"])
    assert client.get(r.headers["location"] + "/results").content.startswith(b"SQLite format 3")

    for wrong in ({"outputs": {"bridges": {"format": {"mediaType": "text/csv"}}}}, {"outputs": {"areas": {}}},
                  {"response": "everything"}, {"outputs": {"bridges": {"transmissionMode": "carrier pigeon"}}}):
        bad = client.post(url, json={"inputs": inputs, **wrong})
        assert bad.status_code == 400, (wrong, bad.text)
        validate(bad.json(), "exception.yaml")


def test_unknown_process_is_no_such_process(serve, client):
    server = serve()
    for r in (client.get(f"{server.url}/processes/detect-cars"),
              client.post(f"{server.url}/processes/detect-cars/execution", json={"inputs": {}})):
        assert r.status_code == 404, r.text
        assert r.json()["type"] == EXCEPTIONS + "no-such-process", r.json()
        validate(r.json(), "exception.yaml")
    job = client.get(f"{server.url}/jobs/00000000-0000-4000-8000-000000000000")
    assert job.status_code == 404 and job.json()["type"] == EXCEPTIONS + "no-such-job"
    other = client.get(f"{server.url}/nothing-here")
    assert other.status_code == 404 and other.json()["type"] not in (EXCEPTIONS + "no-such-job",
                                                                     EXCEPTIONS + "no-such-process")


def test_openapi_version_is_claimed_as_served(serve, client):
    server = serve()
    version = client.get(f"{server.url}/openapi.json").json()["openapi"]
    major_minor = ".".join(version.split(".")[:2])
    desc = [link for link in client.get(f"{server.url}/").json()["links"] if link["rel"] == "service-desc"]
    assert desc and desc[0]["type"] == f"application/vnd.oai.openapi+json;version={major_minor}", (desc, version)
    conforms = client.get(f"{server.url}/conformance").json()["conformsTo"]
    oas30 = "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/oas30"
    assert (oas30 in conforms) == (major_minor == "3.0"), (version, conforms)


def test_invalid_input_is_400_on_execution_and_422_on_jobs(serve, client, scene_file):
    """The rule (serving/api/errors.py): an input the service cannot act on is 400 on the OGC execution
    and 422 on /jobs, with the same reason."""
    server = serve()  # loopback hrefs refused
    href = "http://127.0.0.1:9/scene.tif"
    cases = [({"href": href}, "not a public address"),
             ({"href": "https://example.org/a.tif", "score_threshold": 2}, "less than"),
             ({"href": "file:///etc/passwd"}, "http://")]
    for job_body, words in cases:
        options = {k: v for k, v in job_body.items() if k != "href"}
        ogc = client.post(server.url + EXECUTION, json={"inputs": {"image": {"href": job_body["href"]}, **options}})
        jobs = client.post(f"{server.url}/jobs", json=job_body)
        assert (ogc.status_code, jobs.status_code) == (400, 422), (job_body, ogc.text, jobs.text)
        assert words in ogc.json()["detail"] and ogc.json()["detail"] == jobs.json()["detail"]
        validate(ogc.json(), "exception.yaml")
    not_json = client.post(server.url + EXECUTION, content=b"{inputs", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["detail"], not_json.text
    no_inputs = client.post(server.url + EXECUTION, json={"outputs": {}})
    assert no_inputs.status_code == 400, no_inputs.text


def test_inline_scene(serve, client, scene_file):
    server = serve(max_inline_bytes=400_000)
    scene = scene_file("small.tif", 300, 300).read_bytes()
    value = {"value": base64.b64encode(scene).decode(), "mediaType": "image/tiff; application=geotiff",
             "encoding": "base64"}
    r = client.post(server.url + EXECUTION, json={"inputs": {"image": value, "score_threshold": 0.0},
                                                  "response": "document"})
    assert r.status_code == 200, r.text
    assert r.json()["bridges"]["value"]["type"] == "FeatureCollection"

    jobs_dir = server.service.settings.jobs_dir
    folders = set(jobs_dir.iterdir())
    big = scene_file("big.tif", 900, 900, block=256).read_bytes()
    assert len(big) > 400_000
    r = client.post(server.url + EXECUTION, json={"inputs": {"image": {
        "value": base64.b64encode(big).decode(), "mediaType": "image/tiff"}}})
    assert r.status_code == 413 and "400,000" in r.json()["detail"], r.text
    # within the request's limit, past the scene's once decoded: refused as it is written, nothing left
    just_over = bytes(range(256)) * (410_000 // 256)
    r = client.post(server.url + EXECUTION, json={"inputs": {"image": {
        "value": base64.b64encode(just_over).decode(), "mediaType": "image/tiff"}}})
    assert r.status_code == 413 and "400,000" in r.json()["detail"], r.text
    assert set(jobs_dir.iterdir()) == folders  # nothing left of the refused scenes

    for wrong, words in (({"value": "not base64!!", "mediaType": "image/tiff"}, "base64"),
                         ({"value": base64.b64encode(scene).decode(), "mediaType": "text/plain"}, "image/tiff"),
                         ({"value": base64.b64encode(b"nothing like a raster").decode(), "mediaType": "image/tiff"},
                          "not a raster")):
        r = client.post(server.url + EXECUTION, json={"inputs": {"image": wrong}})
        assert r.status_code == 400 and words in r.json()["detail"], (wrong["mediaType"], r.text)
        assert str(server.service.settings.data_dir) not in r.text
    assert json.loads(client.get(f"{server.url}/processes/detect-bridges").text)["inputs"]["image"]
