"""The sample scenes shipped in ``samples/`` read without a notice: tiled, georeferenced."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.engine.scene import open_scene

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "samples").glob("*.tif"))


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_samples_are_tiled_and_have_a_crs(path):
    info = open_scene(str(path))
    assert not info.striped, f"{path.name} is striped: every run on it warns"
    assert info.crs is not None


def test_both_samples_are_there():
    assert {p.name for p in SAMPLES} == {"autzen_willamette_footbridge_0.30m.tif", "rotterdam_pan1_0.5m.tif"}
