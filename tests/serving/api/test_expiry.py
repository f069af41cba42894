"""Results that expire (``keep_results_s``): the files go, the record stays and says so, its results
answer 410. A full data folder (``max_data_bytes``) refuses submissions with 507 and loses nothing."""

from __future__ import annotations

import time

import pytest


def _post(client, server, scene: bytes, name: str = "a.tif"):
    return client.post(f"{server.url}/jobs", files={"file": (name, scene, "image/tiff")})


def test_finished_jobs_files_are_deleted_after_keep_results(serve, client, scene_file, wait_job):
    server = serve(keep_results_s=1.0)
    r = _post(client, server, scene_file("a.tif", 200, 200).read_bytes())
    url = r.headers["location"]
    assert wait_job(client, url)["status"] == "successful"
    job_id = r.json()["jobID"]
    folder = server.service.job_dir(job_id)
    deadline = time.monotonic() + 20
    while (doc := client.get(url).json()).get("expired") is None:
        assert time.monotonic() < deadline, doc
        time.sleep(0.1)
    assert doc["status"] == "successful" and "deleted" in doc["message"] and "1 second" in doc["message"]
    assert not any("results" in link["href"] for link in doc["links"])
    assert not folder.exists()
    for f in ("", "?f=gpkg"):
        gone = client.get(f"{url}/results{f}")
        assert gone.status_code == 410, gone.text
        assert gone.headers["content-type"].startswith("application/problem+json")
        detail = gone.json()["detail"]
        assert "deleted" in detail and "1 second" in detail and str(folder) not in detail and "/data" not in detail
    listed = client.get(f"{server.url}/jobs").json()["jobs"]
    assert [j["jobID"] for j in listed] == [job_id] and listed[0]["expired"]


def test_results_are_kept_without_keep_results(serve, client, scene_file, wait_job):
    server = serve()
    r = _post(client, server, scene_file("a.tif", 200, 200).read_bytes())
    wait_job(client, r.headers["location"])
    time.sleep(1.5)
    assert client.get(f"{r.headers['location']}/results").status_code == 200


def test_a_full_data_folder_refuses_new_jobs_and_keeps_the_old(serve, client, scene_file, wait_job, tmp_path):
    from serving.api.retention import folder_bytes

    first = serve()
    r = _post(client, first, scene_file("a.tif", 200, 200).read_bytes())
    wait_job(client, r.headers["location"])
    results = client.get(f"{r.headers['location']}/results").content
    job_id = r.json()["jobID"]
    first.stop()

    data = tmp_path / "data"
    server = serve(max_data_bytes=folder_bytes(data))  # full already
    big = scene_file("big.tif", 600, 600).read_bytes()
    refused = _post(client, server, big, "big.tif")
    assert refused.status_code == 507, refused.text
    assert "full" in refused.json()["detail"] and str(data) not in refused.json()["detail"]
    href = client.post(f"{server.url}/jobs", json={"href": "http://127.0.0.1:9/a.tif"})
    assert href.status_code == 507, href.text
    assert client.get(f"{server.url}/jobs/{job_id}/results").content == results  # nothing stored was lost
    server.stop()

    # room for a little but not for this upload: refused while it streams, the partial file removed
    server = serve(max_data_bytes=folder_bytes(data) + 50_000)
    before = sorted(p.name for p in server.service.settings.jobs_dir.iterdir())
    refused = _post(client, server, big, "big.tif")
    assert refused.status_code == 507, refused.text
    assert "full" in refused.json()["detail"]
    assert sorted(p.name for p in server.service.settings.jobs_dir.iterdir()) == before
    assert client.get(f"{server.url}/jobs/{job_id}/results").content == results
    small = _post(client, server, scene_file("s.tif", 64, 64).read_bytes(), "s.tif")
    assert small.status_code == 202, small.text


@pytest.mark.parametrize("text, seconds", [("7d", 7 * 86400), ("12h", 43200), ("30m", 1800), ("90", 90.0),
                                           ("1.5h", 5400), ("2w", 14 * 86400)])
def test_durations(text, seconds):
    from serving.api.retention import describe_duration, parse_duration

    assert parse_duration(text) == seconds
    assert describe_duration(7 * 86400) == "1 week" and describe_duration(43200) == "12 hours"
    for bad in ("", "0d", "-1h", "7 days", "h"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)
