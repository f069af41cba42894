"""``--precision`` on detect, batch and serve: it reaches the model, and a bad value is one line, exit 2."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine

import hbdnet.inference
from serving.cli.detect import resolve_model
from serving.cli.main import main


@pytest.mark.parametrize("command", ["detect", "batch", "serve"])
def test_a_bad_precision_is_one_line_and_exit_2(command, capsys):
    argv = [command, "--precision", "half"] + ([] if command == "serve" else ["scene.tif"])
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "precision must be auto, float32, bfloat16, got 'half'" in err[0], err


def test_detect_runs_the_model_in_the_precision_asked_for(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    path = tmp_path / "s.tif"
    with rasterio.open(path, "w", driver="GTiff", width=96, height=80, count=3, dtype="uint8", crs="EPSG:32631",
                       transform=Affine(0.5, 0, 500000, 0, -0.5, 5800000)) as ds:
        ds.write(np.random.default_rng(0).integers(0, 255, (3, 80, 96), dtype=np.uint8))
    built = []
    load = hbdnet.inference.load_window_detector

    def spy(*args, **kwargs):
        detector = load(*args, **kwargs)
        built.append(detector.precision)
        return detector

    monkeypatch.setattr(hbdnet.inference, "load_window_detector", spy)
    for precision in ("bfloat16", "float32", "auto"):
        rc = main(["detect", str(path), "-o", str(tmp_path / "out.geojson"), "--model", str(tiny_checkpoint),
                   "--workers", "0", "--device", "cpu", "--precision", precision, "-q"])
        assert rc == 0
    assert built == ["bfloat16", "float32", "float32"]  # auto is float32 on a CPU


def test_resolve_model_and_serve_settings_carry_the_precision(tiny_checkpoint):
    from serving.api.settings import Settings

    assert resolve_model(str(tiny_checkpoint), "cpu", "bfloat16").spec.precision == "bfloat16"
    assert resolve_model(str(tiny_checkpoint)).spec.precision == "auto"
    assert Settings(data_dir="d", precision="bfloat16").precision == "bfloat16"
    with pytest.raises(ValueError):
        Settings(data_dir="d", precision="half")
