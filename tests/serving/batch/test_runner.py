"""The batch runner on its own: output names, the manifest file, resuming, and what a scene's line says."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from serving.batch.inputs import SceneInput
from serving.batch.manifest import MANIFEST_NAME, BatchError, Manifest, assign_outputs, open_manifest
from serving.batch.runner import run_batch
from serving.detect import DetectOptions
from serving.engine.detectors import NoopDetector, NoopSpec
from serving.engine.pools import PoolConfig
from serving.model_ref import model_ref
from serving.testing.simulate import PerfectSpec

IN_PROCESS = PoolConfig(workers=0)
TRUTH = np.array([[120.0, 100.0, 150.0, 14.0, 0.4]])


def write_tif(path: Path, size: tuple[int, int] = (200, 260)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(len(path.name)).integers(0, 256, (3, *size), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=size[1], height=size[0], count=3, dtype="uint8",
                       crs="EPSG:32631", transform=Affine(0.5, 0, 500000.0, 0, -0.5, 5800000.0), tiled=True,
                       blockxsize=128, blockysize=128) as ds:
        ds.write(data)
    return path


def scene(path: Path | str, name: str | None = None) -> SceneInput:
    return SceneInput(str(path), name or Path(path).stem, str(path))


def lines(outdir: Path) -> list[dict]:
    return [json.loads(line) for line in (outdir / MANIFEST_NAME).read_text().splitlines()]


# --- output names ------------------------------------------------------------------------------------

def test_shared_stems_get_a_hash_and_names_in_the_manifest_stay_with_their_scene():
    a, b, c = scene("/x/harbour.tif"), scene("/y/Harbour.tif"), scene("/z/river.tif")
    names = assign_outputs([a, b, c], {}, "gpkg")
    assert names[c.uri] == "river_bridges.gpkg"
    assert names[a.uri] != names[b.uri] and all(names[s.uri].endswith("_bridges.gpkg") for s in (a, b))
    assert names[a.uri].startswith("harbour-") and names[b.uri].startswith("Harbour-")  # case-insensitive clash
    # An earlier run gave "river_bridges" to another scene: the new river gets a hash, the old keeps its name.
    old = scene("/old/river.tif")
    previous = {old.uri: {"scene": old.uri, "output": "river_bridges.gpkg"}}
    again = assign_outputs([c, old], previous, "fgb")
    assert again[old.uri] == "river_bridges.fgb" and again[c.uri].startswith("river-")
    # The names do not depend on the order of the inputs.
    assert assign_outputs([b, a, c], {}, "gpkg") == names


# --- the manifest file ------------------------------------------------------------------------------

def test_a_line_cut_short_by_a_crash_is_skipped_and_the_next_starts_on_its_own_line(tmp_path):
    path = tmp_path / MANIFEST_NAME
    path.write_text('{"scene": "a.tif", "status": "ok"}\n{"scene": "b.tif", "sta')
    with Manifest(path) as manifest:
        assert [r["scene"] for r in manifest.records()] == ["a.tif"]
        manifest.append({"scene": "c.tif", "status": "ok"})
        assert list(manifest.latest()) == ["a.tif", "c.tif"]
    assert path.read_text().splitlines()[-1] == '{"scene": "c.tif", "status": "ok"}'


def test_a_second_run_on_the_same_folder_is_refused(tmp_path):
    with open_manifest(tmp_path / "out"):
        with pytest.raises(BatchError, match="another hbdnet batch is running"):
            open_manifest(tmp_path / "out")
    open_manifest(tmp_path / "out").close()  # free again once the first is closed


def test_an_output_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(BatchError, match="is a file"):
        open_manifest(tmp_path / "out")


# --- resuming -----------------------------------------------------------------------------------------

def test_resume_skips_what_is_done_and_reruns_what_changed(tmp_path):
    tifs = [write_tif(tmp_path / "in" / f"s{k}.tif") for k in range(2)]
    bad = tmp_path / "in" / "bad.tif"
    bad.write_text("not a raster")
    scenes = [scene(p) for p in (*tifs, bad)]
    out = tmp_path / "out"
    model = model_ref(PerfectSpec(TRUTH), window=128, overlap=32)

    first = run_batch(scenes, out, model, pool_config=IN_PROCESS)
    assert (first.ran_ok, first.ran_failed, first.failed) == (2, 1, 1)
    assert [r["status"] for r in first.records] == ["ok", "ok", "failed"]  # input order
    assert first.detections == sum(r["detections"] for r in first.records) > 0

    again = run_batch(scenes, out, model, pool_config=IN_PROCESS)
    assert (again.ran_ok, again.skipped_ok, again.skipped_failed) == (0, 2, 1)
    assert len(lines(out)) == 3  # a skipped scene adds no line

    (out / first.records[0]["output"]).unlink()  # an output removed by hand is made again
    bad.unlink()
    write_tif(bad)
    third = run_batch(scenes, out, model, pool_config=IN_PROCESS, retry_failed=True)
    assert (third.ran_ok, third.skipped_ok, third.failed) == (2, 1, 0)

    stricter = run_batch(scenes, out, model, options=DetectOptions(score_thr=0.95), pool_config=IN_PROCESS)
    assert stricter.ran_ok == 3  # other params: every scene again
    assert {r["params"]["score_thr"] for r in lines(out)[-3:]} == {0.95}


def test_a_scene_that_waited_behind_another_does_not_count_the_wait(tmp_path):
    """Each scene's seconds are its own: planning, then from its windows' hand-over to its output."""

    class SlowDetector(NoopDetector):
        def detect(self, images, windows):
            time.sleep(0.4 * len(images))
            return super().detect(images, windows)

    class SlowSpec(NoopSpec):
        def build(self):
            return SlowDetector()

    big = write_tif(tmp_path / "in" / "big.tif", (200, 400))  # 128 px windows: several of them
    small = write_tif(tmp_path / "in" / "small.tif", (100, 100))  # one window
    t = time.perf_counter()
    summary = run_batch([scene(big), scene(small)], tmp_path / "out", model_ref(SlowSpec(), window=128, overlap=32),
                        pool_config=IN_PROCESS)
    total = time.perf_counter() - t
    seconds = {Path(r["scene"]).name: r["seconds"] for r in summary.records}
    assert seconds["big.tif"] >= 0.4 * 4
    assert 0.4 <= seconds["small.tif"] < 0.4 + 1.0 < total  # one window's time, not big.tif's as well


def test_warnings_of_a_scene_are_recorded_with_it(tmp_path):
    striped = tmp_path / "in" / "striped.tif"
    striped.parent.mkdir(parents=True)
    with rasterio.open(striped, "w", driver="GTiff", width=300, height=2000, count=3, dtype="uint8",
                       crs="EPSG:32631", transform=Affine(0.5, 0, 500000.0, 0, -0.5, 5800000.0)) as ds:
        ds.write(np.full((3, 2000, 300), 7, np.uint8))
    said: list[str] = []
    summary = run_batch([scene(striped)], tmp_path / "out", model_ref(NoopSpec(), window=1024, overlap=200),
                        pool_config=IN_PROCESS, log=said.append)
    (record,) = summary.records
    assert record["status"] == "ok" and len(record["warnings"]) == 1 and "striped" in record["warnings"][0]
    assert any(line.startswith("warning: ") and "striped" in line for line in said)
