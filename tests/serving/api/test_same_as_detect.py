"""A job of the service and ``hbdnet detect`` take the one scene path: same scene, same model, same
options, same bridges."""

from __future__ import annotations

import pyogrio.raw
import pytest
import shapely

from serving.cli.main import main

from .conftest import wait_for


def _features(path):
    meta, _, geometry, fields = pyogrio.raw.read(path, layer=pyogrio.list_layers(path)[0][0])
    names = list(meta["fields"])
    rows = [dict(zip(names, (f[i] for f in fields)), geometry=shapely.from_wkb(geometry[i]).wkt)
            for i in range(len(geometry))]
    return meta["crs"], rows


def test_a_job_and_hbdnet_detect_write_the_same_bridges(serve, client, scene_file, tiny_checkpoint, tmp_path):
    scene = scene_file("twin.tif", 300, 420, seed=4)
    server = serve()
    with open(scene, "rb") as f:
        r = client.post(f"{server.url}/jobs", files={"file": ("twin.tif", f, "image/tiff")},
                        data={"format": "gpkg", "score_threshold": "0.05", "bands": "3,1,2"})
    assert r.status_code == 201 or r.status_code == 202, r.text
    job = wait_for(client, r.headers["location"])
    assert job["status"] == "successful", job
    served = tmp_path / "served.gpkg"
    served.write_bytes(client.get(f"{server.url}/jobs/{job['jobID']}/results").content)

    local = tmp_path / "local.gpkg"
    assert main(["detect", str(scene), "-o", str(local), "--model", str(tiny_checkpoint), "--workers", "0",
                 "--score-thr", "0.05", "--bands", "3,1,2", "-q"]) == 0

    crs_served, rows_served = _features(served)
    crs_local, rows_local = _features(local)
    assert crs_served == crs_local
    assert len(rows_local) == job["detections"] > 0  # the tiny random model finds something to compare
    # The scene is named as each was given it: the uploaded file's name, the local path.
    assert {r.pop("scene") for r in rows_served} == {"twin.tif"}
    assert {r.pop("scene") for r in rows_local} == {str(scene)}
    # Equal to float32 rounding: torch's convolutions may sum in another order from one run to the next.
    assert len(rows_served) == len(rows_local)
    def key(row: dict) -> tuple:
        return round(float(row["cx_px"]), 2), round(float(row["cy_px"]), 2), int(row["level"])

    for a, b in zip(sorted(rows_served, key=key), sorted(rows_local, key=key)):
        assert shapely.from_wkt(a.pop("geometry")).equals_exact(shapely.from_wkt(b.pop("geometry")), 1e-3)
        numbers = [k for k, v in a.items() if not isinstance(v, str)]
        assert {k: a[k] for k in a if k not in numbers} == {k: b[k] for k in b if k not in numbers}
        assert [float(a[k]) for k in numbers] == pytest.approx([float(b[k]) for k in numbers], rel=1e-5, abs=1e-6)
