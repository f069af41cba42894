"""OGC API - Processes - Part 1: Core: every document the routes answer validates against the standard's
schemas (``ogc_schemas/``, see its README), and the process executes synchronously and asynchronously."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SCHEMAS = Path(__file__).parent / "ogc_schemas"
BASE = "https://schemas.test/ogcapi-processes-1/"


def _retrieve(uri: str) -> Resource:
    name = uri.rsplit("/", 1)[-1]
    return Resource.from_contents(yaml.safe_load((SCHEMAS / name).read_text()), default_specification=DRAFT202012)


def validate(doc: object, schema: str) -> None:
    registry = Registry(retrieve=_retrieve)
    validator = jsonschema.Draft202012Validator({"$ref": BASE + schema}, registry=registry,
                                                format_checker=jsonschema.FormatChecker())
    validator.validate(doc)


def test_schemas_catch_a_wrong_document():
    validate({"jobID": "x", "status": "running", "type": "process"}, "statusInfo.yaml")
    with pytest.raises(jsonschema.ValidationError):
        validate({"jobID": "x", "status": "succeeded", "type": "process"}, "statusInfo.yaml")  # 2.0 draft's word
    with pytest.raises(jsonschema.ValidationError):
        validate({"id": "x", "status": "running", "type": "process"}, "statusInfo.yaml")


def test_ogc_documents_validate(serve, client, scene_file, static_server, wait_job):
    server = serve(allow_href_hosts=["127.0.0.1"])  # the scene's URL is on loopback: the operator allows it
    url = server.url
    validate(client.get(f"{url}/").json(), "landingPage.yaml")
    rels = {link["rel"] for link in client.get(f"{url}/").json()["links"]}
    assert {"service-desc", "service-doc", "http://www.opengis.net/def/rel/ogc/1.0/conformance",
            "http://www.opengis.net/def/rel/ogc/1.0/processes"} <= rels
    conf = client.get(f"{url}/conformance").json()
    validate(conf, "confClasses.yaml")
    assert "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/core" in conf["conformsTo"]
    validate(client.get(f"{url}/processes").json(), "processList.yaml")
    description = client.get(f"{url}/processes/detect-bridges").json()
    validate(description, "process.yaml")
    assert set(description["inputs"]) == {"image", "score_threshold", "bands", "aoi", "gsd", "resolution"}
    assert "bridges" in description["outputs"]

    # the /jobs documents: status while queued/running and when done, the list, the errors
    r = client.post(f"{url}/jobs", files={"file": ("a.tif", scene_file("a.tif", 300, 300).read_bytes())})
    validate(r.json(), "statusInfo.yaml")
    done = wait_job(client, r.headers["location"])
    validate(done, "statusInfo.yaml")
    validate(client.get(f"{url}/jobs").json(), "jobList.yaml")
    for bad in (client.get(f"{url}/jobs/nope"), client.post(f"{url}/jobs", json={"href": "file:///etc/passwd"}),
                client.get(f"{url}/jobs", params={"limit": 0})):
        assert bad.status_code in (404, 422)
        validate(bad.json(), "exception.yaml")
    assert "openapi" in client.get(f"{url}/openapi.json").json() and client.get(f"{url}/docs").status_code == 200

    # execution: the scene by URL, served from loopback
    scenes = scene_file("remote.tif", 400, 300).parent
    href = f"{static_server(scenes)}/remote.tif"
    body = {"inputs": {"image": {"href": href}, "score_threshold": 0.0}}
    r = client.post(f"{url}/processes/detect-bridges/execution", json=body, headers={"Prefer": "respond-async"})
    assert r.status_code == 201 and r.headers["preference-applied"] == "respond-async"
    validate(r.json(), "statusInfo.yaml")
    status = wait_job(client, r.headers["location"])
    assert status["status"] == "successful"
    validate(status, "statusInfo.yaml")
    async_result = client.get(f"{r.headers['location']}/results").json()
    assert async_result["type"] == "FeatureCollection"

    sync = client.post(f"{url}/processes/detect-bridges/execution", json=body)  # small scene: waits, answers the bridges
    assert sync.status_code == 200 and sync.headers["content-type"].startswith("application/geo+json")
    assert len(sync.json()["features"]) == len(async_result["features"]) > 0
    gpkg = client.post(f"{url}/processes/detect-bridges/execution", json={
        **body, "outputs": {"bridges": {"format": {"mediaType": "application/geopackage+sqlite3"}}}})
    assert gpkg.status_code == 200 and gpkg.content.startswith(b"SQLite format 3")

    for wrong in ({"inputs": {"image": {"href": "file:///etc/passwd"}}}, {"inputs": {"image": 3}},
                  {"inputs": {"image": href, "colour": "red"}}):
        r = client.post(f"{url}/processes/detect-bridges/execution", json=wrong)
        assert r.status_code in (400, 422), r.text
        validate(r.json(), "exception.yaml")
