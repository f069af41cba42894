"""A job planned in ground units (issue 21, part 1): the service reads the scene's ground sample
distance, takes ``gsd`` and ``resolution`` as job options, and prices the job by the windows of the
grid it will really run (a 0.5 m scene for a model whose finest level is 1 m: a quarter of the pixels)."""

from __future__ import annotations

import base64
import dataclasses

from serving.engine.detectors import ModelSpec
from serving.engine.window_count import count_windows, windows_per_level
from serving.model_ref import ModelGsd, model_ref


def test_a_job_runs_and_is_priced_on_the_resampled_grid(serve, client, scene_file, tiny_checkpoint, wait_job):
    ref = dataclasses.replace(model_ref(ModelSpec(path=str(tiny_checkpoint)), name="tiny"),
                              gsd=ModelGsd(min=1.0, best=2.0, max=64.0))
    server = serve(model_ref=ref)
    scene = scene_file("s.tif", 600, 800).read_bytes()  # 0.5 m: resampled down to 1 m, 300 x 400 px
    r = client.post(f"{server.url}/jobs", files={"file": ("s.tif", scene)})
    assert r.status_code == 202, r.text
    coarse = count_windows(300, 400, ref.window, ref.overlap)
    assert r.json()["windows"]["total"] == coarse < count_windows(600, 800, ref.window, ref.overlap)
    done = wait_job(client, r.headers["location"])
    assert done["status"] == "successful" and done["windows"]["total"] == coarse, done
    # native: the scene's own 0.5 m pixels, less the level finer than the model's 1 m
    native = client.post(f"{server.url}/jobs", files={"file": ("s.tif", scene)}, data={"resolution": "native"})
    assert native.status_code == 202, native.text
    levels = windows_per_level(600, 800, ref.window, ref.overlap)
    assert native.json()["windows"]["total"] == sum(n for lv, n in levels if lv.index > 0)
    # a GSD given for the scene overrides its CRS's: at 2 m a pixel it is already coarser than 1 m
    given = client.post(f"{server.url}/jobs", files={"file": ("s.tif", scene)}, data={"gsd": "2"})
    assert given.json()["windows"]["total"] == count_windows(600, 800, ref.window, ref.overlap)
    for field, value in (("resolution", "fine"), ("gsd", "-1")):
        bad = client.post(f"{server.url}/jobs", files={"file": ("s.tif", scene)}, data={field: value})
        assert bad.status_code == 422 and field in bad.text, bad.text
    plain = scene_file("plain.tif", 300, 300, crs=None).read_bytes()
    bad = client.post(f"{server.url}/jobs", files={"file": ("p.tif", plain)}, data={"resolution": "1", "format": "gpkg"})
    assert bad.status_code == 422 and "no ground sample distance" in bad.json()["detail"], bad.text


def test_the_ogc_execution_takes_gsd_and_resolution(serve, client, scene_file, tiny_checkpoint):
    ref = dataclasses.replace(model_ref(ModelSpec(path=str(tiny_checkpoint)), name="tiny"),
                              gsd=ModelGsd(min=1.0, best=2.0, max=64.0))
    server = serve(model_ref=ref)
    execute = f"{server.url}/processes/detect-bridges/execution"
    image = {"value": base64.b64encode(scene_file("s.tif", 600, 800).read_bytes()).decode(), "mediaType": "image/tiff"}
    for inputs, total in (({}, count_windows(300, 400, ref.window, ref.overlap)),
                          ({"gsd": 2.0}, count_windows(600, 800, ref.window, ref.overlap)),
                          ({"resolution": 0.5}, count_windows(600, 800, ref.window, ref.overlap))):
        r = client.post(execute, json={"inputs": {"image": image, **inputs}}, headers={"Prefer": "respond-async"})
        assert r.status_code == 201, r.text
        assert client.get(r.headers["location"]).json()["windows"]["total"] == total, inputs
    bad = client.post(execute, json={"inputs": {"image": image, "resolution": "fine"}})
    assert bad.status_code == 400 and "resolution" in bad.text, bad.text
