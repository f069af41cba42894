"""``hbdnet batch`` and ``hbdnet serve`` on a real Ray cluster of two nodes on this machine (``conftest``):
windows run on both nodes, counted per node in the manifest, and give what one process gives; the second
node lost mid-batch (every process of it killed) leaves the batch to finish on the head, with no window
lost or counted twice; a job posted to ``hbdnet serve --ray-address`` runs on the cluster's actors.

Each ``hbdnet`` runs as a process of its own with a time limit, so that a hang fails the test."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import shapely

from serving.cli.main import main
from serving.testing.ray_cluster import LocalCluster
from serving.testing.servers import free_port, wait_ready

from .conftest import write_scenes

HBDNET = str(Path(sys.executable).with_name("hbdnet"))
# (width, height): 42 to 65 windows of 128 px each, 216 in all; a window takes 20 ms on an idle core.
SIZES = [(800, 600), (700, 600), (700, 500), (600, 500)]
RUN_S = 180  # a batch that has not ended by then hangs


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return write_scenes(tmp_path_factory.mktemp("scenes"), SIZES)


@pytest.fixture(scope="module")
def reference(scenes, tiny_model, tmp_path_factory) -> dict[str, dict]:
    """The bridges of every scene from one process (``--workers 0``, no Ray), by output file name."""
    out = tmp_path_factory.mktemp("single")
    assert main(["batch", str(scenes), "-o", str(out), "--model", str(tiny_model), "--workers", "0", "-q"]) == 0
    return {p.name: bridges(p) for p in sorted(out.glob("*.gpkg"))}


def bridges(path: Path) -> dict[str, np.ndarray]:
    """A GeoPackage's bridges as arrays sorted by position and score: geometry, score, centre, angle, level."""
    layer = next(name for name, _ in pyogrio.list_layers(path) if name != "layer_styles")
    meta, _, geometry, fields = pyogrio.raw.read(path, layer=layer)
    f = dict(zip(meta["fields"], fields))
    order = np.lexsort((f["score"], f["cy_px"], f["cx_px"]))
    return {"geometry": shapely.from_wkb(geometry)[order], **{k: np.asarray(f[k])[order] for k in
                                                              ("score", "cx_px", "cy_px", "angle_px", "level")}}


def assert_same_bridges(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert len(got["score"]) == len(want["score"]) > 0
    for key in ("score", "cx_px", "cy_px", "angle_px"):
        np.testing.assert_allclose(got[key], want[key], atol=1e-4, err_msg=key)
    np.testing.assert_array_equal(got["level"], want["level"])
    assert max(shapely.hausdorff_distance(got["geometry"], want["geometry"])) < 1e-3  # metres (0.5 m pixels)


def manifest(outdir: Path) -> list[dict]:
    path = outdir / "manifest.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1] if line.strip()]


def batch(cluster: LocalCluster, scenes: Path, outdir: Path, model: Path, log: Path) -> subprocess.Popen:
    """``hbdnet batch`` over ``scenes`` on two actors of the cluster."""
    cmd = [HBDNET, "batch", str(scenes), "-o", str(outdir), "--model", str(model), "--ray-address",
           cluster.address, "--workers", "2", "-q"]
    return subprocess.Popen(cmd, env=cluster.env, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)


def finish(proc: subprocess.Popen, log: Path, timeout: float = RUN_S) -> str:
    """Its stdout once it has ended with code 0; a run past ``timeout`` is killed and fails the test."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"hbdnet did not finish within {timeout} s (a hang); its log:\n{log.read_text()[-3000:]}")
    assert proc.returncode == 0, f"exit code {proc.returncode}; log:\n{log.read_text()[-3000:]}"
    return out


def windows_by_node(records: list[dict], cluster: LocalCluster) -> dict[str, int]:
    """Windows run per node name (``node_head``, ``node_b``), over every scene; each scene's windows
    are counted once, on one node or the other."""
    names = {n.node_id: n.name for n in cluster.nodes.values()}
    totals: dict[str, int] = {}
    for rec in records:
        assert sum(rec["nodes"].values()) == rec["windows"], rec  # no window lost, none counted twice
        for node_id, n in rec["nodes"].items():
            totals[names.get(node_id, node_id)] = totals.get(names.get(node_id, node_id), 0) + n
    return totals


def test_batch_runs_windows_on_both_nodes_and_equals_one_process(two_nodes, scenes, tiny_model, reference, tmp_path):
    out = tmp_path / "out"
    stdout = finish(batch(two_nodes, scenes, out, tiny_model, tmp_path / "batch.log"), tmp_path / "batch.log")
    assert any(line.startswith(f"{len(SIZES)} of {len(SIZES)} scenes ok") for line in stdout.splitlines()), stdout
    records = manifest(out)
    assert sorted(r["output"] for r in records) == sorted(reference) and all(r["status"] == "ok" for r in records)
    per_node = windows_by_node(records, two_nodes)
    assert set(per_node) == {"node_head", "node_b"} and min(per_node.values()) > 0, per_node
    for rec in records:
        assert_same_bridges(bridges(out / rec["output"]), reference[rec["output"]])


def test_serve_runs_jobs_on_the_cluster(two_nodes, scenes, tiny_model, reference, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([HBDNET, "serve", "--ray-address", two_nodes.address, "--workers", "2", "--model",
                             str(tiny_model), "--data-dir", str(tmp_path / "data"), "--port", str(port)],
                            env=two_nodes.env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        wait_ready(url, proc, timeout=120)
        # The pool's two actors are up, one on each node's raylet.
        assert two_nodes.worker_pids("node_head") and two_nodes.worker_pids("node_b")
        scene = scenes / "s0.tif"
        with httpx.Client(timeout=30) as client:
            r = client.post(f"{url}/jobs", files={"file": (scene.name, scene.read_bytes())}, data={"format": "gpkg"})
            assert r.status_code == 202, r.text
            job = r.headers["location"]
            doc = wait_job(client, job)
            assert doc["status"] == "successful", doc
            assert doc["windows"]["done"] == doc["windows"]["total"] > 0
            got = tmp_path / "s0_bridges.gpkg"
            got.write_bytes(client.get(f"{job}/results", params={"f": "gpkg"}).content)
        assert_same_bridges(bridges(got), reference["s0_bridges.gpkg"])
        # The server's log says where the job's windows ran: on both nodes of the cluster, each window once.
        line = next(ln for ln in log.read_text().splitlines() if f"job {doc['jobID']} successful" in ln)
        ran = {m[0]: int(m[1]) for m in re.findall(r"([0-9a-f]{56})=(\d+)", line)}
        assert set(ran) == {two_nodes.nodes["node_head"].node_id, two_nodes.nodes["node_b"].node_id}, line
        assert sum(ran.values()) == doc["windows"]["total"], line
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # Stopping the server closed its pool: its actors are gone from both nodes.
    deadline = time.monotonic() + 30
    while (two_nodes.worker_pids("node_head") or two_nodes.worker_pids("node_b")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not two_nodes.worker_pids("node_head") and not two_nodes.worker_pids("node_b")


def wait_job(client: httpx.Client, url: str, timeout: float = RUN_S) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        doc = client.get(url).json()
        if doc["status"] in ("successful", "failed", "dismissed"):
            return doc
        assert time.monotonic() < deadline, f"job still {doc['status']} after {timeout} s: {doc}"
        time.sleep(0.1)


def test_a_node_lost_mid_batch_leaves_the_batch_to_the_head(two_nodes, scenes, tiny_model, reference, tmp_path):
    """Every process of ``node_b`` (raylet, agents, its actor) killed with SIGKILL once a scene is done
    with windows run there: the batch ends with code 0, every scene's bridges those of one process, and
    every window counted once. The lost actor cannot come back (the head's CPUs are held by the other),
    so the windows it had must go to the head's actor."""
    out, log = tmp_path / "out", tmp_path / "batch.log"
    proc = batch(two_nodes, scenes, out, tiny_model, log)
    node_b = two_nodes.nodes["node_b"].node_id
    deadline = time.monotonic() + RUN_S
    while not any(node_b in r["nodes"] for r in manifest(out)):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no scene ran on node_b; log:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    done_before = len(manifest(out))
    killed = two_nodes.kill("node_b")
    assert killed and done_before <= len(SIZES) - 3, f"the batch was nearly done ({done_before} scenes) at the kill"

    finish(proc, log)
    records = manifest(out)
    assert sorted(r["output"] for r in records) == sorted(reference) and all(r["status"] == "ok" for r in records)
    for rec in records:
        assert_same_bridges(bridges(out / rec["output"]), reference[rec["output"]])
    per_node = windows_by_node(records, two_nodes)
    assert per_node["node_head"] > per_node.get("node_b", 0) > 0, per_node
    assert any(set(r["nodes"]) == {two_nodes.nodes["node_head"].node_id} for r in records[done_before:]), records
    assert not set(killed) & set(two_nodes.alive())  # the node stays down: nothing of it came back
