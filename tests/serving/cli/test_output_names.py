"""Names in outputs: files and layers keep the scene's whole stem, the ``scene`` attribute is absolute."""

from __future__ import annotations

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import rasterio
from affine import Affine

from serving.batch.inputs import expand_inputs
from serving.batch.runner import run_batch
from serving.engine.pools import PoolConfig
from serving.engine.scene import scene_reference
from serving.model_ref import model_ref
from serving.testing.engine_runs import detect_to_file
from serving.testing.simulate import PerfectSpec

TRUTH = np.array([[120.0, 100.0, 150.0, 14.0, 0.4]])
STEM = "rotterdam_pan2_0.5m_harbour"


def write_tif(path):
    with rasterio.open(path, "w", driver="GTiff", width=200, height=160, count=3, dtype="uint8",
                       crs="EPSG:32631", transform=Affine(0.5, 0, 500000, 0, -0.5, 5800000)) as ds:
        ds.write(np.full((3, 160, 200), 90, np.uint8))
    return path


@pytest.fixture
def perfect():
    return model_ref(PerfectSpec(TRUTH))


def scene_values(path):
    meta, _, _, fields = pyogrio.raw.read(path, layer=path.stem)
    return set(dict(zip(meta["fields"], fields))["scene"])


def test_scene_reference():
    assert scene_reference("https://host/a/b.tif?x=1") == "https://host/a/b.tif?x=1"
    assert scene_reference("s3://bucket/b.tif") == "s3://bucket/b.tif"
    assert scene_reference("/vsicurl/https://host/b.tif") == "/vsicurl/https://host/b.tif"
    assert scene_reference("/data/b.tif") == "/data/b.tif"


def test_batch_names_keep_the_whole_stem_and_scenes_are_absolute(tmp_path, perfect, monkeypatch):
    (tmp_path / "in").mkdir()
    write_tif(tmp_path / "in" / f"{STEM}.tif")
    monkeypatch.chdir(tmp_path)
    summary = run_batch(expand_inputs([f"in/{STEM}.tif"]), "out", perfect, pool_config=PoolConfig(workers=0))
    assert summary.ran_ok == 1
    out = tmp_path / "out" / f"{STEM}_bridges.gpkg"
    assert summary.records[0]["output"] == out.name
    assert pyogrio.list_layers(out)[0][0] == f"{STEM}_bridges"
    assert scene_values(out) == {str(tmp_path / "in" / f"{STEM}.tif")}


def test_detect_default_name_and_absolute_scene(tmp_path, perfect, monkeypatch, capsys):
    from serving.cli import detect as detect_cli
    from serving.cli.main import main

    write_tif(tmp_path / f"{STEM}.tif")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(detect_cli, "resolve_model", lambda *args, **kwargs: perfect)
    assert main(["detect", f"{STEM}.tif", "--workers", "0", "-q"]) == 0
    out = tmp_path / f"{STEM}_bridges.gpkg"
    assert capsys.readouterr().out.strip().endswith(f"-> {out}")
    assert scene_values(out) == {str(tmp_path / f"{STEM}.tif")}
    # detect_to_file with a relative path, to GeoJSON: the same absolute path.
    geojson = detect_to_file(f"{STEM}.tif", tmp_path / "x.geojson", perfect, pool_config=PoolConfig(workers=0))
    assert scene_values(geojson.output) == {str(tmp_path / f"{STEM}.tif")}
