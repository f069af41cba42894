"""Every CLI error is one line on stderr with its exit code, whoever runs it (CI runs as root)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from serving.cli.main import main
from serving.engine.detectors import NoopSpec


def write_tif(path: Path) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8",
                       crs="EPSG:32631", transform=Affine(0.5, 0, 500000, 0, -0.5, 5800000)) as ds:
        ds.write(np.full((3, 64, 64), 80, np.uint8))
    return path


def one_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"hbdnet {command}: error: "), err
    return err[0]


# --- hbdnet plan, through main ----------------------------------------------------------------------

def test_plan_through_main(capsys):
    assert main(["plan", "3000x5000"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("scene 3000 x 5000 px") and "level 3: 1/8 -> 375 x 625 px, 1 window" in out
    assert out.strip().endswith("total windows: 33")
    # A scene whose window list would not fit in memory is counted, not listed.
    assert main(["plan", "200000", "--window", "32", "--overlap", "31"]) == 0
    assert "total windows: 53,308,545,486" in capsys.readouterr().out


def test_plan_sizes_are_width_x_height_for_a_size_and_a_file_alike(tmp_path, capsys):
    wide = tmp_path / "wide.tif"
    with rasterio.open(wide, "w", driver="GTiff", width=3000, height=1000, count=1, dtype="uint8") as ds:
        ds.write(np.zeros((1, 1000, 3000), np.uint8))
    assert main(["plan", str(wide)]) == 0
    from_file = capsys.readouterr().out
    assert from_file.startswith("scene 3000 x 1000 px (width x height)") and "level 1: 1/2 -> 1500 x 500 px" in from_file
    assert main(["plan", "3000x1000"]) == 0
    assert capsys.readouterr().out == from_file


@pytest.mark.parametrize(("argv", "message"), [
    (["0x5"], "at least 1 x 1 px, got 0 x 5"),
    (["16384", "--window", "512", "--overlap", "512"], "overlap must be in [0, window)"),
    (["16384", "--window", "0"], "argument --window: window must be 1 px or more"),
    (["16384", "--window", "abc"], "argument --window: window must be a whole number of px, got 'abc'"),
    (["16384", "--overlap", "-3"], "argument --overlap: overlap must be 0 px or more"),
    (["no_such_scene.tif"], "is neither a size"),
])
def test_plan_errors_exit_2(argv, message, capsys):
    try:
        rc = main(["plan", *argv])
    except SystemExit as exit_:  # argparse's own errors
        rc = exit_.code
    assert rc == 2
    assert message in one_line(capsys, "plan")


# --- argparse messages ------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["detect", "x.tif", "--workers", "x"], ["detect", "x.tif", "--read-threads", "1.5"],
    ["detect", "x.tif", "--score-thr", "high"], ["detect", "x.tif", "--max-pixels", "lots"],
    ["batch", "x.tif", "-o", "out", "--workers", "two"], ["eval", "--model", "m", "--data", "d", "--workers", "x"],
    ["eval", "--model", "m", "--data", "d", "--device", "gpu"], ["plan", "100", "--overlap", "x"],
    ["detect"], ["batch", "x.tif"],
])
def test_argparse_errors_are_one_line_without_function_names(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    line = one_line(capsys, argv[0])
    assert "invalid" not in line and " _" not in line and "value:" not in line, line


# --- device, output, model --------------------------------------------------------------------------

@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize("command", ["detect", "batch"])
def test_cuda_without_a_gpu_stops_before_any_work(tmp_path, capsys, no_gpu, command):
    tif = str(write_tif(tmp_path / "s.tif"))
    target = ["-o", str(tmp_path / ("o.gpkg" if command == "detect" else "out"))]
    # The model file does not exist: the device is checked first, before the model or the scene.
    assert main([command, tif, *target, "--device", "cuda", "--model", str(tmp_path / "none.pth")]) == 2
    assert "--device cuda: this machine has no CUDA GPU" in one_line(capsys, command)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]  # nothing written, not even a folder


def test_cuda_index_beyond_the_gpus(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    tif = str(write_tif(tmp_path / "s.tif"))
    assert main(["detect", tif, "--device", "cuda:2", "--model", str(tmp_path / "none.pth")]) == 2
    assert "has 2 CUDA GPU(s), cuda:0 to cuda:1" in one_line(capsys, "detect")


def test_unwritable_output_stops_before_detection(tmp_path, capsys, monkeypatch):
    """Independent of the user: the output's folder is a regular file (root cannot write there
    either), and on Linux /proc, where no one can create a file."""
    import serving.detect
    from serving.cli import detect as detect_cli
    from serving.model_ref import model_ref

    def no_detection(*args, **kwargs):
        raise AssertionError("detection started")

    monkeypatch.setattr(detect_cli, "resolve_model", lambda *args, **kwargs: model_ref(NoopSpec()))
    monkeypatch.setattr(serving.detect, "prepare", no_detection)  # the scene is never planned, let alone read
    tif = str(write_tif(tmp_path / "s.tif"))
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    targets = [(a_file / "o.gpkg", "notes.txt is a file, not a folder")]
    if Path("/proc/self").is_dir():
        targets.append((Path("/proc/o.gpkg"), "folder /proc is not writable"))
    for target, message in targets:
        assert main(["detect", tif, "-o", str(target)]) == 2
        line = one_line(capsys, "detect")
        assert message in line and ".partial" not in line, line


def test_bad_model_files_are_one_line(tmp_path, capsys):
    tif = str(write_tif(tmp_path / "s.tif"))
    pickled = tmp_path / "pickled.pth"
    torch.save({"args": argparse.Namespace(lr=0.1)}, pickled)  # weights-only loading refuses it
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(pickled.read_bytes()[:100])
    cases = [(pickled, "it holds a Python object (argparse.Namespace) that is not loaded"),
             (truncated, "failed reading zip archive")]
    for path, message in cases:
        assert main(["detect", tif, "-o", str(tmp_path / "o.gpkg"), "--model", str(path)]) == 2
        line = one_line(capsys, "detect")
        assert "is not a readable PyTorch checkpoint" in line and message in line, line
        assert "weights_only" not in line and "\x1b" not in line and len(line) < 300, line


# --- eval --output ----------------------------------------------------------------------------------

def test_eval_output_is_strict_json(tmp_path, capsys, monkeypatch):
    import hbdnet.data.dota
    import serving.evaluate
    from serving.cli import evaluate as evaluate_cli
    from serving.model_ref import model_ref

    monkeypatch.setattr(evaluate_cli, "resolve_model", lambda *args, **kwargs: model_ref(NoopSpec()))
    monkeypatch.setattr(hbdnet.data.dota, "load_dota_folder", lambda folder: ["image"])
    metrics = {"AP50": 0.5, "AP50_long": float("nan"), "AP75": np.float64("nan"), "inf": float("inf"),
               "images": 1}
    monkeypatch.setattr(serving.evaluate, "evaluate_model", lambda *a, **k: dict(metrics))
    out = tmp_path / "metrics.json"
    assert main(["eval", "--model", "m.pth", "--data", str(tmp_path), "--output", str(out)]) == 0
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}")) == {
        "AP50": 0.5, "AP50_long": None, "AP75": None, "inf": None, "images": 1}
    capsys.readouterr()
    # An output that cannot be written is refused before the evaluation runs.
    monkeypatch.setattr(serving.evaluate, "evaluate_model",
                        lambda *a, **k: pytest.fail("evaluation started"))
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    assert main(["eval", "--model", "m.pth", "--data", str(tmp_path), "--output", str(a_file / "m.json")]) == 2
    assert "is a file, not a folder" in one_line(capsys, "eval")


# --- the plan up front and an estimate from the first windows --------------------------------------

def test_run_estimate_from_the_first_windows():
    from serving.reporting import RunEstimate

    now = [100.0]
    said: list[str] = []
    estimate = RunEstimate(said.append, clock=lambda: now[0], label="s")
    estimate(1, 10)  # not started: nothing
    estimate.start()
    now[0] = 102.0
    estimate(2, 10)
    assert said == []
    now[0] = 103.0
    estimate(3, 303)
    estimate(4, 303)
    assert said == ["estimate: s: about 5 min 00 s left for 300 windows (1.00 s per window from the first 3)"]
    done = RunEstimate(said.append, clock=lambda: now[0])
    done.start()
    done(3, 3)  # nothing left to estimate
    assert len(said) == 1


def test_detect_and_batch_print_the_plan_and_an_estimate(tmp_path, capsys, monkeypatch):
    from serving.cli import batch as batch_cli
    from serving.cli import detect as detect_cli
    from serving.model_ref import model_ref


    noop = model_ref(NoopSpec())
    monkeypatch.setattr(detect_cli, "resolve_model", lambda *args, **kwargs: noop)
    monkeypatch.setattr(batch_cli, "resolve_model", lambda *args, **kwargs: noop)
    tif = tmp_path / "big.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=2200, height=1100, count=1, dtype="uint8",
                       crs="EPSG:32631", transform=Affine(0.5, 0, 500000, 0, -0.5, 5800000), tiled=True,
                       blockxsize=256, blockysize=256) as ds:
        ds.write(np.full((1, 1100, 2200), 90, np.uint8))
    assert main(["detect", str(tif), "-o", str(tmp_path / "o.gpkg"), "--workers", "0", "-q"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "hbdnet detect: plan: ground sample distance 0.5 m; 2200 x 1100 px (width x height), 9 windows " \
                     "to run: level 0 (0.5 m) 6, level 1 (1 m) 2, level 2 (2 m) 1"
    assert len(err) == 2 and err[1].startswith("hbdnet detect: estimate: about ") and "from the first 3" in err[1]
    assert main(["batch", str(tif), "-o", str(tmp_path / "out"), "--workers", "0", "-q"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "hbdnet batch: plan: big: ground sample distance 0.5 m; 2200 x 1100 px (width x height), 9 " \
                     "windows to run: level 0 (0.5 m) 6, level 1 (1 m) 2, level 2 (2 m) 1"
    assert err[1].startswith("hbdnet batch: estimate: big: about ")


def test_plan_of_a_georeferenced_scene_gives_its_ground_sample_distance(capsys):
    sample = Path(__file__).resolve().parents[3] / "samples" / "autzen_willamette_footbridge_0.30m.tif"
    assert main(["plan", str(sample)]) == 0
    lines = capsys.readouterr().out.splitlines()
    # 1 ft pixels of Oregon's state plane (0.3048 m) with the projection's scale factor
    assert lines[1] == "ground sample distance: 0.305 m a pixel at the scene's centre"
