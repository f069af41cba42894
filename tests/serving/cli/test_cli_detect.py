"""``hbdnet detect``: one scene to one GIS file, with a real checkpoint and with the perfect detector;
arguments and every error a user can make, each one line on stderr with its exit code."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import rasterio
import shapely
import torch
from affine import Affine

from hbdnet.checkpoint import bundled_models
from serving.cli.errors import CliError
from serving.cli.main import main
from serving.detect import DetectOptions
from serving.engine.detectors import ModelSpec, NoopSpec
from serving.engine.pools import PoolConfig
from serving.engine.scene import SceneError
from serving.model_ref import model_ref
from serving.outputs.geo_output import OutputError
from serving.testing.engine_runs import detect_to_file
from serving.testing.simulate import PerfectSpec

UTM = ("EPSG:32631", Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 5800000.0))
LONLAT = ("EPSG:4326", Affine(1e-5, 0.0, 3.0, 0.0, -1e-5, 52.0))
IN_PROCESS = PoolConfig(workers=0)


def write_tif(path: Path, crs_transform=UTM, size: tuple[int, int] = (64, 64), count: int = 3,
              dtype: str = "uint8") -> Path:
    crs, transform = crs_transform if crs_transform else (None, Affine.identity())
    data = np.random.default_rng(0).integers(0, 200, (count, *size)).astype(dtype)
    with rasterio.open(path, "w", driver="GTiff", width=size[1], height=size[0], count=count, dtype=dtype,
                       crs=crs, transform=transform, tiled=True, blockxsize=128, blockysize=128) as ds:
        ds.write(data)
    return path


def one_error_line(capsys, prefix: str = "hbdnet detect: error: ") -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(prefix), err
    return err[0]


def test_detect_with_a_checkpoint_writes_geojson_in_the_scene_footprint(tmp_path, tiny_checkpoint, capsys):
    tif = write_tif(tmp_path / "scene.tif", LONLAT, size=(96, 128))
    out = tmp_path / "found.geojson"
    rc = main(["detect", str(tif), "-o", str(out), "--model", str(tiny_checkpoint), "--workers", "0",
               "--device", "cpu", "-q"])
    assert rc == 0
    summary = capsys.readouterr().out.strip()
    n = int(summary.split()[0])
    assert summary.startswith(f"{n} bridge{'' if n == 1 else 's'} found in 1 window, ") and summary.endswith(f"-> {out}")
    doc = json.loads(out.read_text())
    assert len(doc["features"]) == n > 0  # untrained weights report boxes on noise: enough to check the path
    sha = hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert {f["properties"]["model"] for f in doc["features"]} == {f"tiny@{sha[:12]}"}
    footprint = shapely.box(3.0, 52.0 - 96e-5, 3.0 + 128e-5, 52.0)
    for f in doc["features"]:
        # centres lie in the scene (corners of boxes cut at the border may poke out a little)
        assert footprint.buffer(1e-9).contains(shapely.centroid(shapely.geometry.shape(f["geometry"])))
    assert out.with_suffix(".qml").is_file()

    # every score of the untrained model is about 0.5: a threshold of 0.9 drops them all
    rc = main(["detect", str(tif), "-o", str(out), "--model", str(tiny_checkpoint), "--workers", "0",
               "--device", "cpu", "-q", "--score-thr", "0.9", "--read-threads", "3"])
    assert rc == 0 and capsys.readouterr().out.startswith("0 bridges found")
    assert json.loads(out.read_text())["features"] == []


def test_default_output_is_stem_bridges_gpkg_in_the_current_folder(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    tif = write_tif(tmp_path / "in.tif", UTM)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["detect", str(tif), "--model", str(tiny_checkpoint), "--workers", "0", "--device", "cpu"]) == 0
    out = work / "in_bridges.gpkg"
    assert capsys.readouterr().out.strip().endswith(f"-> {out}")
    assert pyogrio.read_info(out, layer="in_bridges")["crs"] == "EPSG:32631"


@pytest.mark.parametrize("crs_transform", [UTM, LONLAT], ids=["utm", "lonlat"])
@pytest.mark.parametrize("suffix", [".gpkg", ".fgb", ".geojson"])
def test_a_bridge_at_a_known_place_comes_back_there(tmp_path, crs_transform, suffix):
    truth = np.array([[700.0, 420.0, 240.0, 16.0, 0.6]])  # scene pixels
    tif = write_tif(tmp_path / "s.tif", crs_transform, size=(600, 900))
    model = model_ref(PerfectSpec(truth))
    outcome = detect_to_file(str(tif), tmp_path / f"b{suffix}", model, pool_config=IN_PROCESS)
    assert outcome.detections == 1 and outcome.windows == 1 and outcome.notes == ()
    meta, _, geometry, fields = pyogrio.raw.read(outcome.output, layer=outcome.output.stem)
    (poly,) = shapely.from_wkb(geometry)
    crs, transform = crs_transform
    x, y = transform @ (700.0, 420.0)
    if suffix == ".geojson":
        from pyproj import Transformer

        assert meta["crs"] == "EPSG:4326"
        x, y = Transformer.from_crs(crs, 4326, always_xy=True).transform(x, y)
        tol = 1e-7  # GeoJSON keeps 7 decimals
    else:
        assert meta["crs"] == crs
        tol = 1e-6 * abs(transform.a)
    c = shapely.centroid(poly)
    assert abs(c.x - x) < tol and abs(c.y - y) < tol
    if crs == "EPSG:32631":  # 0.5 m pixels near the central meridian: 240 px long is 120 m
        assert dict(zip(meta["fields"], fields))["length_m"][0] == pytest.approx(120.0, rel=1e-3)
    # the threshold filters merged boxes (the perfect detector scores a whole bridge ~0.9)
    none = detect_to_file(str(tif), tmp_path / f"none{suffix}", model, DetectOptions(score_thr=0.99),
                          pool_config=IN_PROCESS)
    assert none.detections == 0


def test_bundled_models_by_name_and_as_default(tiny_checkpoint, tmp_path, monkeypatch):
    """Models shipped as hbdnet/weights/NAME.safetensors are found by name, ``default`` without --model."""
    from hbdnet import checkpoint
    from hbdnet.checkpoint import load_model, save_safetensors
    from serving.cli import detect as cli_detect

    monkeypatch.setattr(checkpoint, "WEIGHTS_DIR", tmp_path)
    model, _ = load_model(tiny_checkpoint)
    save_safetensors(tmp_path / "default.safetensors", model, score_thr=0.4)
    save_safetensors(tmp_path / "r50.safetensors", model)
    default = cli_detect.resolve_model(None, "cpu")
    named = cli_detect.resolve_model("r50", "cpu")
    by_path = cli_detect.resolve_model(str(tiny_checkpoint), "cpu")
    assert (default.name, named.name, by_path.name) == ("default", "r50", "tiny")
    assert isinstance(default.spec, ModelSpec) and default.spec.path == str(tmp_path / "default.safetensors")
    assert default.spec.device == "cpu" and default.class_names == ("bridge",)
    assert (default.score_thr, named.score_thr, by_path.score_thr) == (0.4, None, None)
    with pytest.raises(CliError, match=r"unknown model name 'r18' \(bundled models: default, r50\)"):
        cli_detect.resolve_model("r18", "cpu")


def test_the_models_operating_point_is_the_default_threshold(tiny_checkpoint, tmp_path, monkeypatch):
    """Without --score-thr, detect keeps the bridges at or above the threshold stored with the model;
    --score-thr 0 still shows everything."""
    from hbdnet import checkpoint
    from hbdnet.checkpoint import load_model, save_safetensors

    tif = str(write_tif(tmp_path / "s.tif", size=(200, 200)))
    everything = tmp_path / "all.gpkg"
    assert main(["detect", tif, "-o", str(everything), "--model", str(tiny_checkpoint), "--workers", "0", "-q"]) == 0
    scores = np.sort(_scores(everything))
    assert len(scores) >= 4
    thr = float(scores[len(scores) // 2])
    monkeypatch.setattr(checkpoint, "WEIGHTS_DIR", tmp_path / "weights")
    (tmp_path / "weights").mkdir()
    save_safetensors(tmp_path / "weights" / "default.safetensors", load_model(tiny_checkpoint)[0], score_thr=thr)
    kept, shown = tmp_path / "kept.gpkg", tmp_path / "shown.gpkg"
    assert main(["detect", tif, "-o", str(kept), "--workers", "0", "-q"]) == 0
    assert main(["detect", tif, "-o", str(shown), "--workers", "0", "-q", "--score-thr", "0"]) == 0
    kept_scores = _scores(kept)
    assert len(kept_scores) == int((scores >= thr).sum()) < len(scores) and kept_scores.min() >= thr
    assert len(_scores(shown)) == len(scores)


def _scores(path: Path) -> np.ndarray:
    meta, _, _, fields = pyogrio.raw.read(path, layer=path.stem)
    return np.asarray(fields[list(meta["fields"]).index("score")])

def test_scene_without_crs(tmp_path):
    tif = write_tif(tmp_path / "pixels.tif", None)
    model = model_ref(PerfectSpec(np.array([[30.0, 30.0, 40.0, 6.0, 0.0]])))
    outcome = detect_to_file(str(tif), tmp_path / "p.gpkg", model, pool_config=IN_PROCESS)
    assert outcome.detections == 1 and any("no CRS" in note for note in outcome.notes)
    with pytest.raises(OutputError, match="no CRS"):
        detect_to_file(str(tif), tmp_path / "p.geojson", model, pool_config=IN_PROCESS)
    assert not (tmp_path / "p.geojson").exists()


def test_model_errors(tmp_path, capsys):
    tif = str(write_tif(tmp_path / "s.tif"))
    if "default" not in bundled_models():
        assert main(["detect", tif, "-o", str(tmp_path / "o.gpkg")]) == 2
        line = one_error_line(capsys)
        assert "no bundled default model" in line and "--model" in line
    assert main(["detect", tif, "--model", "nosuchmodel"]) == 2
    assert "unknown model name 'nosuchmodel'" in one_error_line(capsys)
    assert main(["detect", tif, "--model", str(tmp_path / "missing.pth")]) == 2
    assert "model file not found" in one_error_line(capsys)
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)  # a PyTorch file, not an hbdnet one
    assert main(["detect", tif, "--model", str(other)]) == 2
    assert "is not an hbdnet checkpoint" in one_error_line(capsys)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    assert main(["detect", tif, "--model", str(text)]) == 2
    assert "not a readable PyTorch checkpoint" in one_error_line(capsys)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_scene_and_output_errors(tmp_path, tiny_checkpoint, capsys):
    model = ["--model", str(tiny_checkpoint), "--workers", "0", "--device", "cpu", "-q"]
    ok_tif = str(write_tif(tmp_path / "ok.tif"))
    not_raster = tmp_path / "notes.tif"
    not_raster.write_text("not a raster")
    complex_tif = write_tif(tmp_path / "complex.tif", count=1, dtype="complex64")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        ([str(tmp_path / "missing.tif")], 1, "scene not found"),
        ([str(not_raster)], 1, "cannot open"),
        ([str(complex_tif)], 1, "no usable image band"),
        ([ok_tif, "--bands", "1,2,9"], 1, "out of range"),
        ([ok_tif, "-o", str(tmp_path / "nofolder" / "o.gpkg")], 2, "does not exist"),
        ([ok_tif, "-o", str(a_file / "o.gpkg")], 2, "is a file, not a folder"),
        ([ok_tif, "-o", str(tmp_path / "o.shp")], 2, "unknown output format '.shp'"),
        ([ok_tif, "-o", str(tmp_path)], 2, "unknown output format"),
        ([str(write_tif(tmp_path / "nocrs.tif", None)), "-o", str(tmp_path / "o.geojson")], 2, "no CRS"),
    ]
    for argv, code, message in cases:
        output = [] if "-o" in argv else ["-o", str(tmp_path / "out.gpkg")]
        assert main(["detect", *argv, *output, *model]) == code, argv
        line = one_error_line(capsys)
        assert message in line and "Traceback" not in line, (argv, line)


def test_debug_shows_the_exception(tmp_path):
    missing = str(tmp_path / "missing.tif")
    with pytest.raises(CliError) as info:
        main(["--debug", "detect", missing, "--model", "nosuchmodel"])
    assert info.value.code == 2
    with pytest.raises(CliError, match="unknown model name"):
        main(["detect", missing, "--model", "nosuchmodel", "--debug"])


@pytest.mark.parametrize("argv", [
    ["--bands", "1,2"], ["--bands", "0"], ["--bands", "a,b,c"], ["--device", "gpu"],
    ["--score-thr", "1.5"], ["--workers", "-1"], ["--read-threads", "0"],
])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(["detect", "scene.tif", *argv])
    assert info.value.code == 2
    assert "hbdnet detect: error: argument" in capsys.readouterr().err


def test_worker_options_reach_the_pool():
    from serving.cli.arguments import pool_config
    from serving.cli.main import build_parser
    from serving.engine.pools import PoolConfig

    for command in (["detect", "x.tif"], ["batch", "x.tif", "-o", "out"]):
        args = build_parser().parse_args([*command, "--workers", "3", "--read-threads", "4", "--ray-address", "auto"])
        assert pool_config(args) == PoolConfig(workers=3, ray_address="auto", read_threads=4)
        assert pool_config(build_parser().parse_args(command)) == PoolConfig()


def test_scene_errors_from_the_library(tmp_path):
    model = model_ref(NoopSpec())
    with pytest.raises(SceneError, match="scene not found"):
        detect_to_file(str(tmp_path / "nope.tif"), tmp_path / "o.gpkg", model, pool_config=IN_PROCESS)
    assert not (tmp_path / "o.gpkg").exists()


def test_progress_lines_for_programs_that_run_hbdnet(tmp_path, tiny_checkpoint, capsys):
    tif = write_tif(tmp_path / "scene.tif", LONLAT, size=(1500, 2200))
    rc = main(["detect", str(tif), "-o", str(tmp_path / "b.gpkg"), "--model", str(tiny_checkpoint), "--workers", "0",
               "--device", "cpu", "--progress-lines"])
    assert rc == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "progress" in line]
    steps = [tuple(map(int, line.split()[-2].split("/"))) for line in lines]
    assert all(line.startswith("hbdnet detect: progress ") and line.endswith(" windows") for line in lines)
    total = steps[-1][1]
    assert total > 1 and steps[-1] == (total, total) and len(steps) == len(set(steps)) >= 2
    assert [d for d, _ in steps] == sorted(d for d, _ in steps)


def test_aoi_from_a_file_in_another_crs_limits_the_search_and_says_so(tmp_path, tiny_checkpoint, capsys):
    from pyproj import Transformer

    tif = write_tif(tmp_path / "scene.tif", UTM, size=(1500, 2200))  # 1100 x 750 m
    west = shapely.box(500000, 5799250, 500400, 5800000)  # UTM: the west 800 px of the scene's 2200
    to_lonlat = Transformer.from_crs("EPSG:32631", "EPSG:4326", always_xy=True)
    area = shapely.transform(shapely.segmentize(west, 20), lambda xy: np.column_stack(to_lonlat.transform(*xy.T)))
    aoi = tmp_path / "area.geojson"
    pyogrio.raw.write(aoi, shapely.to_wkb([area]), [], [], geometry_type="Polygon", crs="EPSG:4326",
                      driver="GeoJSON")
    args = ["detect", str(tif), "--model", str(tiny_checkpoint), "--workers", "0", "--device", "cpu", "-q",
            "--score-thr", "0"]
    assert main([*args, "-o", str(tmp_path / "all.gpkg")]) == 0
    everywhere = capsys.readouterr().out
    assert main([*args, "-o", str(tmp_path / "west.gpkg"), "--aoi", str(aoi)]) == 0
    summary = capsys.readouterr().out
    # only the area and half a window around it (512 px) is read: 800 + 512 columns of 2200, every row
    assert " within area.geojson (1 polygon) (only 1313 x 1500 px around it read, " in summary, summary
    assert " windows there outside it not run, " in summary
    dropped = int(summary.split(" outside it dropped")[0].rsplit(", ", 1)[1].split()[0])
    assert dropped > 0  # the untrained model reports boxes everywhere, also around the area
    assert int(summary.split()[0]) < int(everywhere.split()[0])
    assert int(summary.split(" windows")[0].split()[-1]) < int(everywhere.split(" windows")[0].split()[-1])
    meta, _, geometry, fields = pyogrio.raw.read(tmp_path / "west.gpkg", layer="west")
    centres = shapely.centroid(shapely.from_wkb(geometry))
    assert len(centres) and shapely.contains(west.buffer(1.0), centres).all()
    info = pyogrio.read_info(tmp_path / "west.gpkg", layer="west")
    assert "searched within the area of interest area.geojson (1 polygon)" in info["layer_metadata"]["DESCRIPTION"]


def test_a_bad_aoi_is_one_line(tmp_path, tiny_checkpoint, capsys):
    tif = write_tif(tmp_path / "scene.tif", UTM, size=(300, 300))
    assert main(["detect", str(tif), "--model", str(tiny_checkpoint), "--aoi", "4,52,3,53"]) == 2
    assert "min < max" in one_error_line(capsys)


def test_an_aoi_on_a_scene_without_a_crs_is_one_line(tmp_path, tiny_checkpoint, capsys):
    tif = write_tif(tmp_path / "plain.tif", None, size=(300, 300))
    assert main(["detect", str(tif), "-o", str(tmp_path / "b.gpkg"), "--model", str(tiny_checkpoint), "-q",
                 "--aoi", "3,52,4,53"]) == 1
    assert "the scene has no CRS, so an area of interest cannot be placed on it" in one_error_line(capsys)
