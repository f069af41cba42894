"""Several API keys from a keys file: each key sees, fetches and dismisses only its own jobs, an admin
key sees all; the key's name is on the job and in the log, the key itself nowhere; /docs and
/openapi.json need a key like every other route."""

from __future__ import annotations

import logging

import pytest

ALICE, BOB, OPS = "alice-key-0123456789abcdef", "bob-key-0123456789abcdef", "ops-key-0123456789abcdef"


def _keys_file(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text(f"# name  key  [admin]\nalice {ALICE}\n\nbob   {BOB}\nops {OPS} admin\n")
    return path


def _submit(client, server, key: str, scene: bytes, name: str) -> str:
    r = client.post(f"{server.url}/jobs", headers={"X-API-Key": key}, files={"file": (name, scene, "image/tiff")})
    assert r.status_code == 202, r.text
    return r.json()["jobID"]


def test_each_key_sees_only_its_own_jobs_and_admin_sees_all(serve, client, tmp_path, scene_file, wait_job, caplog):
    caplog.set_level(logging.INFO, logger="hbdnet.serve")
    server = serve(keys_file=_keys_file(tmp_path))
    scene = scene_file("a.tif", 200, 200).read_bytes()
    a = {"X-API-Key": ALICE}
    b = {"X-API-Key": BOB}
    admin = {"X-API-Key": OPS}
    alice_job = _submit(client, server, ALICE, scene, "alice.tif")
    bob_job = _submit(client, server, BOB, scene, "bob.tif")

    listed = lambda h: sorted(j["jobID"] for j in client.get(f"{server.url}/jobs", headers=h).json()["jobs"])
    assert listed(a) == [alice_job]
    assert listed(b) == [bob_job]
    assert listed(admin) == sorted([alice_job, bob_job])
    assert client.get(f"{server.url}/jobs", headers=a).json()["numberMatched"] == 1

    doc = wait_job(client, f"{server.url}/jobs/{alice_job}", headers=a)
    assert doc["status"] == "successful" and doc["owner"] == "alice"
    # another user's job does not exist for bob: status, results and dismissal all 404
    for method, path in (("GET", ""), ("GET", "/results"), ("DELETE", "")):
        r = client.request(method, f"{server.url}/jobs/{alice_job}{path}", headers=b)
        assert r.status_code == 404, r.text
        assert ALICE not in r.text and "alice" not in r.text
    assert client.get(f"{server.url}/jobs/{alice_job}/results", headers=a).status_code == 200
    assert client.get(f"{server.url}/jobs/{alice_job}", headers=a).json()["status"] == "successful"
    # the admin key sees and dismisses anyone's job
    assert client.get(f"{server.url}/jobs/{bob_job}", headers=admin).json()["owner"] == "bob"
    assert client.delete(f"{server.url}/jobs/{bob_job}", headers=admin).json()["status"] == "dismissed"

    # the name is on the record and in the log; the key is in neither
    logged = caplog.text
    assert "alice" in logged and "bob" in logged
    data = server.service.settings.data_dir
    stored = b"".join(p.read_bytes() for p in data.glob("jobs.sqlite3*"))
    assert b"alice" in stored
    for key in (ALICE, BOB, OPS):
        assert key not in logged and key.encode() not in stored


def test_wrong_key_and_docs_need_a_key(serve, client, tmp_path):
    server = serve(keys_file=_keys_file(tmp_path))
    for path in ("/jobs", "/docs", "/openapi.json"):
        for headers in ({}, {"X-API-Key": "alice-key-0123456789abcdeX"}, {"X-API-Key": "alice"}):
            r = client.get(f"{server.url}{path}", headers=headers)
            assert r.status_code == 401, (path, headers, r.status_code)
            assert r.json()["detail"].startswith("missing or wrong API key")
    assert client.get(f"{server.url}/openapi.json", headers={"X-API-Key": BOB}).json()["info"]["title"] == "hbdnet"
    assert client.get(f"{server.url}/docs", headers={"X-API-Key": BOB}).status_code == 200
    for path in ("/healthz", "/readyz"):
        assert client.get(f"{server.url}{path}").status_code == 200


def test_the_single_api_key_is_an_admin_key(serve, client, tmp_path, scene_file):
    server = serve(api_key="s3cret", keys_file=_keys_file(tmp_path))
    job = _submit(client, server, ALICE, scene_file("a.tif", 200, 200).read_bytes(), "a.tif")
    r = client.get(f"{server.url}/jobs/{job}", headers={"X-API-Key": "s3cret"})
    assert r.status_code == 200 and r.json()["owner"] == "alice"
    assert client.get(f"{server.url}/docs", headers={"X-API-Key": "s3cret"}).status_code == 200


@pytest.mark.parametrize("text, words", [
    ("alice short\n", ["line 1", "at least 16"]),
    (f"alice {ALICE}\nalice {BOB}\n", ["line 2", "name 'alice'", "twice"]),
    (f"alice {ALICE}\nbob {ALICE}\n", ["line 2", "same key"]),
    (f"alice {ALICE} root\n", ["line 1", "admin"]),
    ("# nothing\n", ["no key"]),
    (f"al/ice {ALICE}\n", ["line 1", "name"]),
])
def test_a_bad_keys_file_is_refused_with_the_line(tmp_path, text, words):
    from serving.api.keys import KeysFileError, load_keys

    path = tmp_path / "keys.txt"
    path.write_text(text)
    with pytest.raises(KeysFileError) as info:
        load_keys(path)
    for word in words:
        assert word in str(info.value), str(info.value)
    assert ALICE not in str(info.value)  # a key is never echoed


def test_a_database_from_before_keys_opens_and_its_jobs_are_the_admins(tmp_path):
    import sqlite3

    from serving.api.store import SqliteJobStore

    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as db:  # the table as the first release made it
        db.execute("""CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, status TEXT NOT NULL,
            source TEXT NOT NULL, options TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL,
            started TEXT, finished TEXT, message TEXT, windows_done INTEGER NOT NULL DEFAULT 0,
            windows_total INTEGER NOT NULL DEFAULT 0, detections INTEGER, attempts INTEGER NOT NULL DEFAULT 0,
            sync INTEGER NOT NULL DEFAULT 0, timings TEXT NOT NULL DEFAULT '{}', notes TEXT NOT NULL DEFAULT '[]')""")
        db.execute("INSERT INTO jobs (id, status, source, options, created, updated) "
                   "VALUES ('old', 'successful', 'upload', '{}', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')")
    store = SqliteJobStore(path)
    old = store.get("old")
    assert old is not None and old.owner is None and old.expired is None
    assert store.page(10, 0, owner="alice") == ([], 0)
    assert [j.id for j in store.page(10, 0)[0]] == ["old"]
    store.close()
