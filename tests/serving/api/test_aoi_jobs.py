"""An area of interest through the service: ``aoi`` as a form field, in a JSON body and as an OGC
bounding box input; the job is priced by the windows that meet it, its bridges lie inside it, and an
area that cannot be used is refused (422 on /jobs, 400 on the OGC execution) before the job exists."""

from __future__ import annotations

import base64
import json

import shapely

# write_scene (conftest): 0.5 m pixels, top-left at (500000, 5800000) in EPSG:32631
WEST = "500000,5799850,500100,5800000,EPSG:32631"  # the west 200 px of a 600 px wide scene


def _features(client, url: str) -> list[dict]:
    return client.get(f"{url}/results?f=geojson").json()["features"]


def test_a_job_searches_only_its_area(serve, client, scene_file, wait_job):
    server = serve()
    data = scene_file("s.tif", 300, 600).read_bytes()
    whole = client.post(f"{server.url}/jobs?score_threshold=0", files={"file": ("s.tif", data)})
    part = client.post(f"{server.url}/jobs?score_threshold=0", files={"file": ("s.tif", data)},
                       data={"aoi": WEST})
    assert whole.status_code == part.status_code == 202, part.text
    assert 0 < part.json()["windows"]["total"] < whole.json()["windows"]["total"]
    assert wait_job(client, part.headers["location"])["status"] == "successful"
    assert wait_job(client, whole.headers["location"])["status"] == "successful"
    inside = _features(client, part.headers["location"])
    everywhere = _features(client, whole.headers["location"])
    assert 0 < len(inside) < len(everywhere)  # the tiny model reports boxes all over the scene
    west = shapely.box(3.0, 52.0, 3.0015, 53.0)  # the west 100 m, about 0.00146 degrees at 52 N
    assert all(west.contains(shapely.centroid(shapely.geometry.shape(f["geometry"]))) for f in inside)


def test_an_area_as_a_geojson_polygon(serve, client, scene_file, wait_job):
    server = serve()
    # the scene's corner is at 3 E, 52.34 N: the polygon takes its west 100 m
    polygon = {"type": "Polygon", "coordinates": [[[2.99, 52.0], [3.0015, 52.0], [3.0015, 53.0], [2.99, 53.0],
                                                   [2.99, 52.0]]]}
    r = client.post(f"{server.url}/jobs?score_threshold=0", files={"file": ("s.tif", scene_file("s.tif", 300, 600)
                                                                             .read_bytes())},
                    data={"aoi": json.dumps(polygon)})
    assert r.status_code == 202, r.text
    assert wait_job(client, r.headers["location"])["status"] == "successful"
    west = shapely.geometry.shape(polygon)
    features = _features(client, r.headers["location"])
    assert features and all(west.contains(shapely.centroid(shapely.geometry.shape(f["geometry"])))
                            for f in features)


def test_areas_that_cannot_be_used_are_refused_before_the_job_exists(serve, client, scene_file):
    server = serve()
    data = scene_file("s.tif", 300, 600).read_bytes()
    for aoi, words in (("/etc/passwd", "give minx,miny,maxx,maxy"), ("3,52,2,53", "min < max"),
                       ("10,10,11,11", "does not overlap the scene"),
                       (json.dumps({"type": "Point", "coordinates": [3, 52]}), "Polygon or a MultiPolygon")):
        r = client.post(f"{server.url}/jobs", files={"file": ("s.tif", data)}, data={"aoi": aoi})
        assert r.status_code == 422 and words in r.json()["detail"], (aoi, r.text)
    assert client.get(f"{server.url}/jobs").json()["numberMatched"] == 0


def test_the_ogc_execution_takes_a_bounding_box(serve, client, scene_file):
    server = serve()
    execute = f"{server.url}/processes/detect-bridges/execution"
    scene = base64.b64encode(scene_file("s.tif", 300, 600).read_bytes()).decode()
    image = {"value": scene, "mediaType": "image/tiff"}
    for aoi in ({"bbox": [2.99, 52.0, 3.0015, 53.0]},
                {"bbox": [500000, 5799850, 500100, 5800000], "crs": "http://www.opengis.net/def/crs/EPSG/0/32631"}):
        ok = client.post(execute, json={"inputs": {"image": image, "aoi": aoi}}, headers={"Prefer": "respond-async"})
        assert ok.status_code == 201, ok.text
    bad = client.post(execute, json={"inputs": {"image": image, "aoi": {"bbox": [1, 2, 3]}}})
    assert bad.status_code == 400 and "bbox" in bad.json()["detail"]
    outside = client.post(execute, json={"inputs": {"image": image, "aoi": {"bbox": [10, 10, 11, 11]}}})
    assert outside.status_code == 400 and "does not overlap" in outside.json()["detail"]
    assert "aoi" in client.get(f"{server.url}/processes/detect-bridges").json()["inputs"]
