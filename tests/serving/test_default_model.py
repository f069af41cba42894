"""The model that ships (``hbdnet/weights/default.safetensors``) finds real bridges.

These tests run the whole path a user runs (reading, channel order, pyramid, window offsets, box
scale, merge, georeferencing), so a wrong channel order, box size or window offset makes them fail:

- it loads without pickle;
- on the sample scene in the repository (``samples/autzen_willamette_footbridge_0.30m.tif``, a 190 m
  footbridge at 0.30 m, finer than anything the model was trained on), through ``detect_scene`` and
  through ``hbdnet detect`` (its GeoPackage read back in the scene's CRS);
- on the GLH-Bridge demo image: each of the two decks (skipped where ``../shared/data`` is absent);
- slow: AP50 on NWPU val, and the false boxes per 100 held-out bridge-free NWPU images at the
  operating point, are the figures in ``MODEL_CARD.md``.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from hbdnet.boxes.iou import box_iou_rotated
from hbdnet.checkpoint import bundled_model_path, load_model
from serving.engine.detectors import DetectorSpec, ModelSpec
from serving.testing.engine_runs import detect_file as detect_scene

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("HBDNET_SHARED_DATA", REPO / ".." / "shared" / "data"))
SAMPLE = REPO / "samples" / "autzen_willamette_footbridge_0.30m.tif"
# samples/README.md: centre (945, 3450), ends (835, 3745) and (1055, 3155), deck ~12 px wide.
FOOTBRIDGE = (945.0, 3450.0, math.hypot(220, 590), 12.0, math.atan2(-590, 220))
GLH_DEMO = SHARED / "glh-bridge-demo"
NWPU_VAL = SHARED / "nwpu-bridges" / "val"
NEGATIVES = SHARED / "nwpu-negatives"


def default_spec() -> DetectorSpec:
    return ModelSpec(path=str(bundled_model_path("default")), device="cpu")


def default_threshold() -> float:
    _, meta = load_model(bundled_model_path("default"))
    return float(meta["score_thr"])


def on_axis(boxes: np.ndarray, truth: tuple[float, ...], angle_tol: float = 10.0,
            length_tol: float = 0.35) -> np.ndarray:
    """Which ``(N, 5)`` boxes lie along the ``truth`` bridge: direction within ``angle_tol`` degrees, length
    within ``length_tol`` of its length, centre within a tenth of its length. Not an IoU: the light
    model's box on the 3.7 m wide footbridge is several times too wide (MODEL_CARD.md)."""
    cx, cy, length, _, theta = truth
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    long_side = np.maximum(b[:, 2], b[:, 3])
    direction = np.where(b[:, 2] >= b[:, 3], b[:, 4], b[:, 4] + math.pi / 2)
    turn = np.abs((direction - theta + math.pi / 2) % math.pi - math.pi / 2)
    centre = np.hypot(b[:, 0] - cx, b[:, 1] - cy)
    return (np.degrees(turn) <= angle_tol) & (np.abs(long_side / length - 1) <= length_tol) & (centre <= 0.1 * length)


def test_default_model_loads_without_pickle(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the shipped model must load without pickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    path = bundled_model_path("default")
    assert path.suffix == ".safetensors" and path.stat().st_size < 64 * 2**20
    model, meta = load_model(path)
    assert 0 < float(meta["score_thr"]) < 1
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp16 on disk, float32 to compute


@pytest.fixture(scope="module")
def sample_result():
    return detect_scene(str(SAMPLE), default_spec(), workers=0)


def test_default_model_finds_the_sample_footbridge(sample_result):
    kept = sample_result.scores >= default_threshold()
    hits = on_axis(sample_result.boxes[kept], FOOTBRIDGE)
    assert hits.sum() == 1, (sample_result.boxes[kept], sample_result.scores[kept])  # one box, not fragments


def test_hbdnet_detect_puts_the_footbridge_on_the_map(tmp_path, capsys):
    import pyogrio.raw
    import shapely
    from rasterio.crs import CRS

    from serving.cli.main import main

    out = tmp_path / "autzen.gpkg"
    assert main(["detect", str(SAMPLE), "-o", str(out), "--workers", "0", "--device", "cpu"]) == 0
    assert str(out) in capsys.readouterr().out  # says where the output went
    meta, _, wkb, _ = pyogrio.raw.read(out, layer="autzen")
    polygons = shapely.from_wkb(wkb)
    with rasterio.open(SAMPLE) as ds:
        assert CRS.from_user_input(meta["crs"]) == ds.crs
        transform = ds.transform
    truth = shapely.Point(transform @ (FOOTBRIDGE[0], FOOTBRIDGE[1]))  # the deck's centre, in feet
    on_bridge = [g for g in polygons if g.contains(truth)]
    assert len(on_bridge) == 1, polygons
    # Its long side follows the deck: ~630 px of 1 ft.
    corners = shapely.get_coordinates(on_bridge[0].minimum_rotated_rectangle)
    length = max(math.dist(corners[0], corners[1]), math.dist(corners[1], corners[2]))
    assert length == pytest.approx(FOOTBRIDGE[2] * abs(transform.a), rel=0.35)


@pytest.mark.skipif(not GLH_DEMO.is_dir(), reason="../shared/data/glh-bridge-demo is not here")
@pytest.mark.xfail(strict=True, reason="the shipped light model misses this twin-deck bridge (MODEL_CARD.md, "
                   "known limits); a model that finds both decks turns this into a failure to update")
def test_default_model_finds_both_decks_of_the_glh_demo():
    from hbdnet.data.dota import load_dota_folder

    (image,) = load_dota_folder(GLH_DEMO)
    result = detect_scene(str(image.image_path), default_spec(), workers=0)
    kept = result.scores >= default_threshold()
    iou = box_iou_rotated(image.boxes.double(), torch.from_numpy(result.boxes[kept]).double())
    assert len(image.boxes) == 2
    assert (iou.max(dim=1).values >= 0.5).all(), (iou, result.boxes[kept], result.scores[kept])


def model_card_figure(row: str) -> float:
    text = (REPO / "MODEL_CARD.md").read_text()
    match = re.search(rf"^\| *{re.escape(row)} *\| *([0-9.]+) *\|", text, flags=re.MULTILINE)
    assert match, f"MODEL_CARD.md has no '| {row} | x |' row"
    return float(match.group(1))


@pytest.mark.slow
@pytest.mark.skipif(not NWPU_VAL.is_dir(), reason="../shared/data/nwpu-bridges is not here")
def test_default_model_val_ap50_is_the_model_cards():
    from hbdnet.data.dota import load_dota_folder
    from serving.evaluate import evaluate_model
    from serving.model_ref import resolve_model

    metrics = evaluate_model(load_dota_folder(NWPU_VAL), resolve_model("default", "cpu"))
    assert metrics["AP50"] == pytest.approx(model_card_figure("OBB AP50"), abs=0.005), metrics


@pytest.mark.slow
@pytest.mark.skipif(not NEGATIVES.is_dir(), reason="../shared/data/nwpu-negatives is not here")
def test_default_model_false_boxes_on_held_out_negatives_are_the_model_cards():
    from hbdnet.data.dota import load_dota_folder
    from serving.evaluate import evaluate_model
    from serving.model_ref import resolve_model

    held_out = [im for im in load_dota_folder(NEGATIVES) if int(im.image_id) % 5 == 0]  # docs/data.md
    assert len(held_out) == 97
    metrics = evaluate_model(held_out, resolve_model("default", "cpu"))
    want = model_card_figure("false boxes per 100 held-out bridge-free images")
    assert metrics["op_fp_per_100_images"] == pytest.approx(want, abs=0.6), metrics
