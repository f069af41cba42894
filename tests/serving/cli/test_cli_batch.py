"""``hbdnet batch`` and ``serving.batch.runner.run_batch`` on real GeoTIFFs: outputs at the right map
positions, the manifest, resuming after SIGINT / SIGKILL, failed scenes, names, a shared Ray pool."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import rasterio
import shapely
import torch
from affine import Affine

from hbdnet.boxes.convention import obb_to_poly
from serving.batch.inputs import SceneInput, expand_inputs
from serving.batch.manifest import MANIFEST_NAME, BatchError, Manifest
from serving.batch.runner import run_batch
from serving.cli.main import main
from serving.detect import DetectOptions
from serving.engine.detectors import NoopSpec
from serving.engine.pools import PoolConfig, make_pool
from serving.model_ref import ModelRef, model_ref
from serving.testing.simulate import PerfectSpec

REPO = Path(__file__).resolve().parents[3]
H, W = 300, 400
UTM = ("EPSG:32631", Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 5800000.0))
LONLAT = ("EPSG:4326", Affine(1e-5, 0.0, 3.0, 0.0, -1e-5, 52.0))
# Two bridges fully inside a 300 x 400 scene (one window: the perfect detector returns them whole).
TRUTH = np.array([[120.0, 100.0, 150.0, 14.0, 0.4], [300.0, 220.0, 80.0, 10.0, -1.2]])
IN_PROCESS = PoolConfig(workers=0)


def write_tif(path: Path, crs_transform=UTM, size: tuple[int, int] = (H, W)) -> Path:
    crs, transform = crs_transform
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(len(path.name)).integers(0, 256, (3, *size), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=size[1], height=size[0], count=3, dtype="uint8",
                       crs=crs, transform=transform, tiled=True, blockxsize=128, blockysize=128) as ds:
        ds.write(data)
    return path


def scenes_of(*paths: Path) -> list[SceneInput]:
    return expand_inputs([str(p) for p in paths])


def manifest_lines(outdir: Path) -> list[dict]:
    """The complete lines of the manifest (a run may be writing the next one while we read)."""
    path = outdir / MANIFEST_NAME
    if not path.exists():
        return []
    complete = path.read_text().split("\n")[:-1]
    return [json.loads(line) for line in complete if line.strip()]


@pytest.fixture(scope="module")
def perfect() -> ModelRef:
    return model_ref(PerfectSpec(TRUTH))


def read_polygons(path: Path) -> tuple[np.ndarray, dict, dict[str, np.ndarray]]:
    meta, _, geometry, fields = pyogrio.raw.read(path, layer=path.stem)
    return shapely.from_wkb(geometry), meta, dict(zip(meta["fields"], fields))


def test_outputs_put_each_bridge_at_its_map_position(tmp_path, perfect):
    utm = write_tif(tmp_path / "in" / "utm.tif", UTM)
    lonlat = write_tif(tmp_path / "in" / "lonlat.tif", LONLAT)
    out = tmp_path / "out"
    summary = run_batch(scenes_of(tmp_path / "in"), out, perfect, pool_config=IN_PROCESS)
    assert (summary.ran_ok, summary.failed, summary.detections) == (2, 0, 4)
    for tif, (crs, transform) in ((utm, UTM), (lonlat, LONLAT)):
        gpkg = out / f"{tif.stem}_bridges.gpkg"
        info = pyogrio.read_info(gpkg, layer=gpkg.stem)
        assert info["features"] == 2 and info["crs"] == crs and info["geometry_type"] == "Polygon"
        polys, _, fields = read_polygons(gpkg)
        corners = obb_to_poly(torch.from_numpy(TRUTH)).numpy().reshape(-1, 4, 2)
        a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
        for k in range(len(TRUTH)):
            i = int(np.argmin(np.abs(fields["cx_px"] - TRUTH[k, 0])))
            expected = shapely.Polygon(np.stack([a * corners[k, :, 0] + b * corners[k, :, 1] + c,
                                                 d * corners[k, :, 0] + e * corners[k, :, 1] + f], axis=1))
            tol = 1e-3 * abs(a)  # a thousandth of a pixel
            assert shapely.hausdorff_distance(polys[i], expected) < tol
            centre = shapely.centroid(polys[i])
            x, y = transform @ (TRUTH[k, 0], TRUTH[k, 1])
            assert abs(centre.x - x) < tol and abs(centre.y - y) < tol
        assert set(fields["model"]) == {perfect.label} and set(fields["scene"]) == {str(tif)}
    records = manifest_lines(out)
    assert [(r["scene"], r["output"], r["status"], r["detections"]) for r in records] == [
        (str(lonlat), "lonlat_bridges.gpkg", "ok", 2), (str(utm), "utm_bridges.gpkg", "ok", 2)]
    for r in records:
        assert r["model"] == {"name": "perfect", "sha256": perfect.sha256} and r["error"] is None
        assert r["windows"] == 1 and r["seconds"] > 0 and r["finished_at"].endswith("+00:00")
        assert r["params"] == {"format": "gpkg", "score_thr": 0.0, "bands": None, "window": 1024, "overlap": 200}


@pytest.mark.parametrize("fmt", ["geojson", "fgb"])
def test_other_formats_and_score_threshold(tmp_path, perfect, fmt):
    tif = write_tif(tmp_path / "s.tif", UTM)
    out = tmp_path / "out"
    run_batch(scenes_of(tif), out, perfect, fmt=fmt, pool_config=IN_PROCESS)
    path = out / f"s_bridges.{fmt}"
    info = pyogrio.read_info(path, layer=path.stem)
    assert info["features"] == 2
    assert info["crs"] == ("EPSG:4326" if fmt == "geojson" else "EPSG:32631")
    polys, _, _ = read_polygons(path)
    if fmt == "geojson":
        from pyproj import Transformer

        lon, lat = Transformer.from_crs(32631, 4326, always_xy=True).transform(*(UTM[1] @ (120.0, 100.0)))
        assert min(shapely.distance(polys, shapely.Point(lon, lat))) < 1e-9  # inside the first bridge
    # the perfect detector scores whole bridges 0.9 +- noise: a threshold above that keeps none
    summary = run_batch(scenes_of(tif), out, perfect, fmt=fmt, options=DetectOptions(score_thr=0.99),
                        pool_config=IN_PROCESS)
    assert summary.ran_ok == 1 and summary.detections == 0  # a changed threshold runs the scene again
    assert len(read_polygons(path)[0]) == 0


def test_bad_scenes_are_recorded_and_the_others_run(tmp_path, perfect):
    good1, good2 = write_tif(tmp_path / "a.tif"), write_tif(tmp_path / "c.tif", LONLAT)
    bad = tmp_path / "b.tif"
    bad.write_text("not a raster")
    lst = tmp_path / "scenes.txt"
    lst.write_text(f"{good1}\n{bad}\nmissing.tif\n{good2}\n")
    out = tmp_path / "out"
    summary = run_batch(scenes_of(lst), out, perfect, pool_config=IN_PROCESS)
    assert (summary.ran_ok, summary.ran_failed) == (2, 2)
    status = {Path(r["scene"]).name: (r["status"], r["error"]) for r in manifest_lines(out)}
    assert status["a.tif"] == ("ok", None) and status["c.tif"] == ("ok", None)
    assert status["b.tif"][0] == "failed" and "cannot open" in status["b.tif"][1]
    assert status["missing.tif"] == ("failed", f"scene not found: {tmp_path / 'missing.tif'}")
    assert (out / "a_bridges.gpkg").is_file() and (out / "c_bridges.gpkg").is_file()
    assert not (out / "b_bridges.gpkg").exists()

    # re-run: nothing runs again; the failures stand
    again = run_batch(scenes_of(lst), out, perfect, pool_config=IN_PROCESS)
    assert (again.ran_ok, again.ran_failed, again.skipped_ok, again.skipped_failed) == (0, 0, 2, 2)
    assert len(manifest_lines(out)) == 4
    # --retry-failed: only the failed ones run, and the repaired one now succeeds
    write_tif(bad)
    retried = run_batch(scenes_of(lst), out, perfect, pool_config=IN_PROCESS, retry_failed=True)
    assert (retried.ran_ok, retried.ran_failed, retried.skipped_ok) == (1, 1, 2)
    lines = manifest_lines(out)
    assert len(lines) == 6 and [Path(r["scene"]).name for r in lines[4:]] == ["b.tif", "missing.tif"]
    assert [r["status"] for r in retried.records] == ["ok", "ok", "failed", "ok"]


def test_rerun_skips_done_scenes_unless_model_output_or_settings_change(tmp_path, perfect, monkeypatch):
    tifs = [write_tif(tmp_path / f"s{k}.tif") for k in range(3)]
    out = tmp_path / "out"
    run_batch(scenes_of(*tifs), out, perfect, pool_config=IN_PROCESS)
    assert len(manifest_lines(out)) == 3

    def no_pool(*args, **kwargs):
        raise AssertionError("a run with nothing to do must not start workers")

    monkeypatch.setattr("serving.batch.runner.make_pool", no_pool)
    summary = run_batch(scenes_of(*tifs), out, perfect, pool_config=IN_PROCESS)
    assert (summary.skipped_ok, summary.ran_ok) == (3, 0) and len(manifest_lines(out)) == 3
    monkeypatch.undo()

    (out / "s1_bridges.gpkg").unlink()  # a lost output is made again
    summary = run_batch(scenes_of(*tifs), out, perfect, pool_config=IN_PROCESS)
    assert (summary.skipped_ok, summary.ran_ok) == (2, 1) and manifest_lines(out)[-1]["scene"] == str(tifs[1])

    other = model_ref(PerfectSpec(TRUTH[:1]))  # other weights: another hash
    summary = run_batch(scenes_of(*tifs), out, other, pool_config=IN_PROCESS)
    assert summary.ran_ok == 3 and summary.detections == 3
    assert {r["model"]["sha256"] for r in manifest_lines(out)[-3:]} == {other.sha256} != {perfect.sha256}

    summary = run_batch(scenes_of(*tifs), out, other, fmt="fgb", pool_config=IN_PROCESS)
    assert summary.ran_ok == 3 and all((out / f"s{k}_bridges.fgb").is_file() for k in range(3))


def test_output_names_are_unique_and_stable(tmp_path, perfect):
    a, b = write_tif(tmp_path / "a" / "x.tif"), write_tif(tmp_path / "b" / "X.tif", LONLAT)
    c = write_tif(tmp_path / "c" / "y.tif")
    out = tmp_path / "out"
    run_batch(scenes_of(a, b, c), out, perfect, pool_config=IN_PROCESS)
    names = {r["scene"]: r["output"] for r in manifest_lines(out)}
    assert names[str(c)] == "y_bridges.gpkg"
    assert names[str(a)].startswith("x-") and names[str(b)].startswith("X-")
    assert names[str(a)] != names[str(b)] and len(names[str(a)]) == len("x-12345678_bridges.gpkg")
    # the same scenes in another order, in a fresh folder: the same names
    out2 = tmp_path / "out2"
    run_batch(scenes_of(c, b, a), out2, perfect, pool_config=IN_PROCESS)
    assert {r["scene"]: r["output"] for r in manifest_lines(out2)} == names
    # a new scene whose stem an earlier scene holds never takes (and overwrites) its output
    d = write_tif(tmp_path / "d" / "y.tif", LONLAT)
    run_batch(scenes_of(d), out, perfect, pool_config=IN_PROCESS)
    new = manifest_lines(out)[-1]
    assert new["scene"] == str(d) and new["output"].startswith("y-")
    assert pyogrio.read_info(out / "y_bridges.gpkg", layer="y_bridges")["crs"] == "EPSG:32631"  # still c's


def test_torn_last_line_and_a_second_run_on_the_folder(tmp_path, perfect):
    tifs = [write_tif(tmp_path / f"s{k}.tif") for k in range(2)]
    out = tmp_path / "out"
    run_batch(scenes_of(tifs[0]), out, perfect, pool_config=IN_PROCESS)
    with open(out / MANIFEST_NAME, "ab") as f:
        f.write(b'{"scene": "/cut/short", "status": "o')  # a crash in the middle of a line
    summary = run_batch(scenes_of(*tifs), out, perfect, pool_config=IN_PROCESS)
    assert (summary.skipped_ok, summary.ran_ok) == (1, 1)
    lines = (out / MANIFEST_NAME).read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["scene"] == str(tifs[1])
    with Manifest(out / MANIFEST_NAME):
        with pytest.raises(BatchError, match="another hbdnet batch is running"):
            run_batch(scenes_of(*tifs), out, perfect, pool_config=IN_PROCESS)
    (tmp_path / "file").write_text("x")
    with pytest.raises(BatchError, match="is a file"):
        run_batch(scenes_of(*tifs), tmp_path / "file", perfect, pool_config=IN_PROCESS)


DRIVER = textwrap.dedent("""
    # Runs the real `hbdnet batch` command with the noop detector, each scene made slower by a sleep.
    import sys, time
    import serving.cli.batch as cli_batch
    import serving.detect as scene_path
    from serving.engine.detectors import NoopSpec
    from serving.model_ref import model_ref

    delay = float(sys.argv[1])
    real_prepare = scene_path.prepare

    def slow_prepare(*args, **kwargs):
        time.sleep(delay)
        return real_prepare(*args, **kwargs)

    scene_path.prepare = slow_prepare
    cli_batch.resolve_model = lambda *args, **kwargs: model_ref(NoopSpec())
    from serving.cli.main import main
    sys.exit(main(["batch", *sys.argv[2:]]))
""")


def _start(driver: Path, delay: float, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(driver), str(delay), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_lines(proc: subprocess.Popen, outdir: Path, n: int, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while len(manifest_lines(outdir)) < n:
        assert proc.poll() is None, f"batch ended early: {proc.communicate()}"
        assert time.monotonic() < end, "no manifest line in time"
        time.sleep(0.02)


def test_interrupted_and_killed_runs_resume_and_run_every_scene_once(tmp_path):
    n = 6
    for k in range(n):
        write_tif(tmp_path / "in" / f"s{k}.tif", size=(64, 64))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "out"
    args = [str(tmp_path / "in"), "-o", str(out), "--workers", "0", "-q"]

    first = _start(driver, 0.5, args)
    _wait_for_lines(first, out, 1)
    first.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = first.communicate(timeout=60)
    assert first.returncode == 130 and "hbdnet batch: interrupted" in err and "Traceback" not in err
    done_after_first = len(manifest_lines(out))
    assert 1 <= done_after_first < n

    second = _start(driver, 0.5, args)
    _wait_for_lines(second, out, done_after_first + 1)
    second.kill()  # SIGKILL: no clean-up at all
    second.communicate(timeout=60)
    done_after_second = len(manifest_lines(out))
    assert done_after_first < done_after_second < n

    # the last run in this process (same noop model, same settings): the rest, and only the rest
    third = run_batch(expand_inputs([str(tmp_path / "in")]), out, model_ref(NoopSpec()),
                      pool_config=IN_PROCESS)
    assert (third.skipped_ok, third.ran_ok, third.failed) == (done_after_second, n - done_after_second, 0)
    records = manifest_lines(out)
    assert sorted(Path(r["scene"]).name for r in records) == [f"s{k}.tif" for k in range(n)]  # each once
    assert all(r["status"] == "ok" for r in records)
    assert all((out / r["output"]).is_file() for r in records)


def test_cli_batch_with_a_checkpoint_and_exit_codes(tmp_path, tiny_checkpoint, capsys):
    folder = tmp_path / "in"
    write_tif(folder / "a.tif", size=(64, 64))
    (folder / "b.tif").write_text("not a raster")
    out = tmp_path / "out"
    args = ["batch", str(folder), "-o", str(out), "--model", str(tiny_checkpoint), "--workers", "0",
            "--device", "cpu", "--format", "geojson", "-q"]
    assert main(args) == 1  # one scene failed
    captured = capsys.readouterr()
    assert "1 of 2 scenes ok, 1 failed" in captured.out
    assert "hbdnet batch: failed: " in captured.err and "b.tif" in captured.err
    records = {Path(r["scene"]).name: r for r in manifest_lines(out)}
    assert records["a.tif"]["status"] == "ok"
    assert records["a.tif"]["model"]["name"] == "tiny"
    assert records["a.tif"]["detections"] == len(read_polygons(out / "a_bridges.geojson")[0])

    assert main(args) == 1  # the failure stands on a re-run
    assert "1 in an earlier run; --retry-failed runs them again" in capsys.readouterr().out
    (folder / "b.tif").unlink()
    write_tif(folder / "b.tif", size=(64, 64))
    assert main([*args, "--retry-failed"]) == 0
    assert "2 of 2 scenes ok, 1 done before" in capsys.readouterr().out


def test_cli_batch_usage_errors(tmp_path, tiny_checkpoint, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["batch", str(tmp_path / "nope"), "-o", str(tmp_path / "o")], "input not found"),
        (["batch", str(empty), "-o", str(tmp_path / "o")], "no scenes found"),
        (["batch", str(write_tif(tmp_path / "a.tif")), "-o", str(tmp_path / "a.tif"), "--model",
          str(tiny_checkpoint)], "is a file"),
        (["batch", str(tmp_path / "a.tif"), "-o", str(tmp_path / "o"), "--model", "nosuchmodel"],
         "unknown model name 'nosuchmodel'"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("hbdnet batch: error: ") and message in err[0], err


@pytest.mark.slow  # about 15 s, most of it starting Ray
def test_scenes_share_one_ray_pool(ray_runtime, tmp_path, perfect):
    tifs = [write_tif(tmp_path / "u.tif", UTM), write_tif(tmp_path / "g.tif", LONLAT)]
    reference = run_batch(scenes_of(*tifs), tmp_path / "ref", perfect, pool_config=IN_PROCESS)
    with make_pool(perfect.spec, PoolConfig(workers=1)) as pool:
        pids = pool.worker_pids()
        summary = run_batch(scenes_of(*tifs), tmp_path / "ray", perfect, pool=pool)
        assert pool.worker_pids() == pids  # the same actor served both scenes and is still up
    assert summary.ran_ok == 2
    for r, ref in zip(summary.records, reference.records):
        assert r["detections"] == ref["detections"] == 2
        got, _, fields = read_polygons(tmp_path / "ray" / r["output"])
        want, _, ref_fields = read_polygons(tmp_path / "ref" / ref["output"])
        order, ref_order = np.argsort(fields["cx_px"]), np.argsort(ref_fields["cx_px"])
        assert all(shapely.equals_exact(got[order], want[ref_order], tolerance=1e-9))


def test_striped_scene_is_noted_in_its_manifest_line_only(tmp_path, perfect):
    tiled = write_tif(tmp_path / "in" / "tiled.tif")
    striped = tmp_path / "in" / "striped.tif"
    with rasterio.open(tiled) as src:
        profile = {**src.profile, "tiled": False, "blockysize": 8}
        profile.pop("blockxsize")
        with rasterio.open(striped, "w", **profile) as dst:
            dst.write(src.read())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the note goes to the manifest, not out as a Python warning
        summary = run_batch(scenes_of(striped, tiled), tmp_path / "out", perfect, pool_config=IN_PROCESS)
    assert summary.ran_ok == 2
    notes = {Path(r["scene"]).name: r["warnings"] for r in summary.records}
    assert notes["tiled.tif"] == []
    assert len(notes["striped.tif"]) == 1 and "is striped" in notes["striped.tif"][0]


def test_next_scene_is_planned_while_the_pool_runs_the_one_before(tmp_path, monkeypatch):
    """Planning (open, stretch and coverage scans) of scene k+1 runs beside the detection of scene k."""
    import serving.detect as batch

    tifs = [write_tif(tmp_path / "in" / f"s{k}.tif", size=(64, 64)) for k in range(3)]
    events: list[tuple[str, str, float]] = []
    real_prepare = batch.prepare

    def slow_prepare(*args, **kwargs):
        events.append(("plan", "", time.monotonic()))
        time.sleep(0.3)
        return real_prepare(*args, **kwargs)

    class SlowDetector:
        name = "slow"

        def detect(self, images, windows):
            events.append(("detect", "", time.monotonic()))
            time.sleep(0.3)
            events.append(("detected", "", time.monotonic()))
            return [(np.zeros((0, 5)), np.zeros(0), np.zeros(0, dtype=np.int64)) for _ in images]

    class SlowSpec(NoopSpec):
        def build(self):
            return SlowDetector()

    monkeypatch.setattr(batch, "prepare", slow_prepare)
    summary = run_batch(scenes_of(*tifs), tmp_path / "out", model_ref(SlowSpec()), pool_config=IN_PROCESS)
    assert summary.ran_ok == 3
    kinds = [k for k, _, _ in events]
    # One window per scene: plan s0, then s1's planning starts before s0's detection ends, and so on.
    assert kinds.count("detect") == 3
    plans = [t for k, _, t in events if k == "plan"]
    ends = [t for k, _, t in events if k == "detected"]
    assert plans[1] < ends[0] and plans[2] < ends[1]


def test_the_summary_counts_one_bridge_in_the_singular(tmp_path, capsys, monkeypatch):
    import serving.cli.batch as cli_batch
    from serving.model_ref import model_ref

    one = model_ref(PerfectSpec(np.array([[200.0, 150.0, 160.0, 14.0, 0.4]])), window=256, overlap=56)
    monkeypatch.setattr(cli_batch, "resolve_model", lambda *args, **kwargs: one)
    write_tif(tmp_path / "in" / "a.tif")
    assert main(["batch", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--workers", "0", "-q"]) == 0
    assert "1 of 1 scenes ok, 1 bridge found now ->" in capsys.readouterr().out
