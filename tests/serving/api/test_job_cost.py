"""A job's cost known and bounded before it is accepted (issue 19, item 4): the plan's window count
and a time estimate in the job document from its 202 on, limits on both refused with 422 and the
numbers, the estimate taken from the seconds per window measured on this server once a job ran."""

from __future__ import annotations

from serving.engine.window_count import count_windows


def test_windows_and_estimate_are_in_the_document_before_the_job_runs(serve, client, scene_file, wait_job):
    server = serve(seconds_per_window=0.5)
    big = client.post(f"{server.url}/jobs", files={"file": ("big.tif", scene_file("big.tif", 1500, 1500).read_bytes())})
    r = client.post(f"{server.url}/jobs", files={"file": ("small.tif", scene_file("small.tif", 300, 400).read_bytes())})
    assert r.status_code == 202, r.text
    first = r.json()
    windows = count_windows(300, 400, server.service.model.window, server.service.model.overlap)
    assert first["windows"] == {"done": 0, "total": windows} and windows > 1
    assert first["timings"]["estimated"] == round(windows * 0.5, 3)  # nothing measured yet: the default
    client.delete(big.headers["location"])
    done = wait_job(client, r.headers["location"])
    assert done["status"] == "successful" and done["windows"]["total"] == windows  # the plan's own count
    measured = done["timings"]["stream"] / windows
    again = client.post(f"{server.url}/jobs", files={"file": ("small.tif", scene_file("small.tif", 300, 400).read_bytes())})
    estimated = again.json()["timings"]["estimated"]
    assert estimated != round(windows * 0.5, 3) and abs(estimated - windows * measured) < 0.5 * windows * measured + 0.01


def test_limits_refuse_with_the_numbers(serve, client, scene_file):
    scene = scene_file("scene.tif", 1500, 1500).read_bytes()
    windows = serve(max_windows=10)
    r = client.post(f"{windows.url}/jobs", files={"file": ("scene.tif", scene)})
    assert r.status_code == 422, r.text
    n = count_windows(1500, 1500, windows.service.model.window, windows.service.model.overlap)
    assert f"{n:,} windows" in r.json()["detail"] and "limit of 10" in r.json()["detail"], r.text
    seconds = serve(max_job_seconds=5, seconds_per_window=1.0)
    r = client.post(f"{seconds.url}/jobs", files={"file": ("scene.tif", scene)})
    assert r.status_code == 422, r.text
    assert f"about {n:,} s" in r.json()["detail"] and "limit of 5 s" in r.json()["detail"], r.text
