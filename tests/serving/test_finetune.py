"""``hbdnet finetune``: a georeferenced scene and a bridge layer in another CRS become training windows,
the run resumes after Ctrl-C to the same model, and the file it writes is a model ``hbdnet detect`` runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyogrio.raw
import pyproj
import pytest
import rasterio
import shapely
import torch
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.transform import from_origin

from hbdnet.boxes import obb_to_poly
from hbdnet.checkpoint import load_model, read_checkpoint, save_checkpoint
from serving.cli.main import main
from serving.finetune.data import FinetuneDataError, labelled_scenes

UTM = "EPSG:32633"
TRANSFORM = from_origin(500_000.0, 5_800_000.0, 0.5, 0.5)
# (cx, cy, w, h, theta) in scene pixels; the last one's centre lies off the scene
BRIDGES = [(90.0, 100.0, 120.0, 16.0, 0.3), (250.0, 230.0, 150.0, 18.0, -1.0), (300.0, 90.0, 70.0, 12.0, 0.9)]
OFF_SCENE = (500.0, 500.0, 80.0, 14.0, 0.2)


def write_scene(path: Path, dtype: str = "uint8", size: tuple[int, int] = (320, 380)) -> Path:
    h, w = size
    rng = np.random.default_rng(0)
    img = rng.normal(90, 12, size=(3, h, w)).clip(0, 255)
    polys = obb_to_poly(torch.tensor(BRIDGES, dtype=torch.float64)).numpy().reshape(-1, 4, 2)
    mask = rasterize([shapely.Polygon(p) for p in polys], out_shape=(h, w), fill=0, default_value=1).astype(bool)
    img[:, mask] = 220
    if dtype == "uint16":
        img = img * 40 + 1000
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=3, dtype=dtype, crs=CRS.from_string(UTM),
                       transform=TRANSFORM) as ds:
        ds.write(img.astype(dtype))
    return path


def pixel_polygons_to_lonlat(boxes: list[tuple[float, ...]]) -> np.ndarray:
    """The boxes as polygons in WGS84: another CRS than the scene's."""
    polys = obb_to_poly(torch.tensor(boxes, dtype=torch.float64)).numpy().reshape(-1, 4, 2)
    to_lonlat = pyproj.Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    out = []
    for p in polys:
        xs, ys = TRANSFORM @ (p[:, 0], p[:, 1])
        lon, lat = to_lonlat.transform(xs, ys)
        out.append(shapely.Polygon(np.column_stack([lon, lat])))
    return np.array(out)


def write_layer(path: Path, geometries: np.ndarray, crs: str = "EPSG:4326") -> Path:
    # Attributes like those of a layer hbdnet detect wrote (ignored by finetune)
    scores = np.linspace(0.9, 0.6, len(geometries))
    pyogrio.raw.write(path, shapely.to_wkb(geometries), [scores], ["score"], geometry_type="Polygon", crs=crs)
    return path


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny untrained HBD-Net with 128 px windows: fast on a CPU, a real model file."""
    from hbdnet.models.build import ModelConfig
    from hbdnet.models.hbdnet import HBDNet, HBDNetConfig

    small = {"backbone": "resnet_tiny", "pretrained": False, "fpn_channels": 16, "rpn_feat_channels": 16,
             "fc_channels": 32, "rpn_nms_pre": 200, "rpn_max_per_img": 100, "rcnn_num_samples": 64}
    torch.manual_seed(0)
    model = HBDNet(HBDNetConfig(local=ModelConfig(**small), global_detector=ModelConfig(finest_scale=56.0, **small),
                                window=128, overlap=32))
    return save_checkpoint(tmp_path_factory.mktemp("base") / "tiny.pth", model, meta={"name": "tiny", "score_thr": 0.05})


@pytest.fixture()
def inputs(tmp_path):
    scene = write_scene(tmp_path / "scene.tif")
    labels = write_layer(tmp_path / "corrected.gpkg", pixel_polygons_to_lonlat([*BRIDGES, OFF_SCENE]))
    return scene, labels


def test_labels_in_another_crs_become_the_scenes_boxes(inputs):
    scene, labels = inputs
    data = labelled_scenes([scene], labels)
    (image,) = data.images
    assert data.labels_outside == 1 and data.bridges == 3 and not data.reviewed_given
    got = image.boxes.double()
    want = torch.tensor(BRIDGES, dtype=torch.float64)
    for box in want:  # the same rectangles, whatever the order
        d = (got[:, :2] - box[:2]).norm(dim=1)
        i = int(d.argmin())
        assert d[i] < 0.5
        assert torch.allclose(got[i, 2:4].sort().values, box[2:4].sort().values, atol=0.5)
    assert set(data.checksums) == {str(scene), str(labels)}


def test_reviewed_areas_bound_the_bridge_free_windows(inputs, tmp_path):
    from hbdnet.data.windows import WindowConfig, WindowDataset

    scene, labels = inputs
    to_lonlat = pyproj.Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    x0, y0 = TRANSFORM @ (0, 0)
    x1, y1 = TRANSFORM @ (200, 320)  # the scene's left part: 200 of its 380 columns
    lon, lat = to_lonlat.transform([x0, x1, x1, x0], [y0, y0, y1, y1])
    reviewed = write_layer(tmp_path / "reviewed.gpkg", np.array([shapely.Polygon(np.column_stack([lon, lat]))]))
    config = WindowConfig(window=128, overlap=32, max_side=128)
    everywhere = WindowDataset(labelled_scenes([scene], labels).images, [0], config)
    left = WindowDataset(labelled_scenes([scene], labels, reviewed).images, [0], config)
    assert len(left.entries) == len(everywhere.entries)  # windows with a bridge count wherever they are
    assert 0 < len(left.spare) < len(everywhere.spare)
    assert all(e.window.col_off + e.window.width <= 200 for e in left.spare)


def test_a_16_bit_scene_trains_on_the_pixels_detect_sees(tmp_path):
    from hbdnet.data.windows import WindowConfig, WindowDataset
    from serving.engine.reader import prepare_read, window_image
    from serving.engine.scene import open_scene

    scene = write_scene(tmp_path / "scene16.tif", dtype="uint16")
    labels = write_layer(tmp_path / "l.gpkg", pixel_polygons_to_lonlat(BRIDGES))
    windows = WindowDataset(labelled_scenes([scene], labels).images, [0], WindowConfig(window=128, overlap=32, max_side=128))
    sample = windows[0]
    assert sample.image.dtype == torch.uint8
    spec, _ = prepare_read(open_scene(str(scene)), coverage_scan=False)
    m = sample.meta
    with rasterio.open(scene) as ds:
        raw = ds.read(window=((m["row_off"], m["row_off"] + m["height"]), (m["col_off"], m["col_off"] + m["width"])))
    assert torch.equal(sample.image, torch.from_numpy(window_image(spec, raw, None)))


def test_a_scene_finer_than_the_model_trains_on_the_grid_detect_reads(tmp_path):
    """A 0.5 m scene for a model whose finest useful level is 1 m: detect reads it resampled to about
    1 m (``serving.resolution``), so the labels land in that grid's pixels and the windows are its."""
    from hbdnet.data.windows import WindowConfig, WindowDataset
    from serving.engine.reader import prepare_read, window_image
    from serving.engine.scene import open_grid, open_scene, regridded
    from serving.model_ref import ModelGsd

    scene = write_scene(tmp_path / "fine.tif")
    labels = write_layer(tmp_path / "l.gpkg", pixel_polygons_to_lonlat(BRIDGES))
    data = labelled_scenes([scene], labels, gsd=ModelGsd(min=1.0, best=2.0, max=8.0))
    regrid = data.regrids[scene]
    assert regrid.factor == pytest.approx(0.5, abs=0.001) and (regrid.width, regrid.height) == (190, 160)
    got = data.images[0].boxes.double()
    for box in torch.tensor(BRIDGES, dtype=torch.float64):
        i = int((got[:, :2] - box[:2] * regrid.factor).norm(dim=1).argmin())
        assert (got[i, :2] - box[:2] * regrid.factor).norm() < 0.5
        assert torch.allclose(got[i, 2:4].sort().values, box[2:4].sort().values * regrid.factor, atol=0.5)
    windows = WindowDataset(data.images, [0], WindowConfig(window=128, overlap=32, max_side=128))
    sample = windows[0]
    m = sample.meta
    assert m["image_size"] == (160, 190)
    info = regridded(open_scene(str(scene)), regrid)
    spec, _ = prepare_read(info, coverage_scan=False)
    with open_grid(str(scene), regrid) as ds:
        raw = ds.read(window=((m["row_off"], m["row_off"] + m["height"]), (m["col_off"], m["col_off"] + m["width"])))
    assert torch.equal(sample.image, torch.from_numpy(window_image(spec, raw, None)))


def test_labels_on_no_scene_and_bad_layers_are_one_line(inputs, tmp_path, tiny_base, capsys):
    scene, _ = inputs
    far = write_layer(tmp_path / "far.gpkg", pixel_polygons_to_lonlat([OFF_SCENE]))
    with pytest.raises(FinetuneDataError, match="none of its 1 polygons lies on the scenes"):
        labelled_scenes([scene], far)
    points = tmp_path / "points.geojson"
    points.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [15.0, 52.0]}}]}))
    code = main(["finetune", "--model", str(tiny_base), "--scene", str(scene), "--labels", str(points),
                 "-o", str(tmp_path / "m.safetensors")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "holds no polygon" in err
    assert not (tmp_path / "m.safetensors").exists()


def _argv(base: Path, scene: Path, labels: Path, out: Path) -> list[str]:
    return ["finetune", "--model", str(base), "--scene", str(scene), "--labels", str(labels), "-o", str(out),
            "--epochs", "6", "--checkpoint-every", "2", "--no-progress"]


def test_finetune_resumes_after_ctrl_c_to_the_same_model_and_detect_runs_it(inputs, tiny_base, tmp_path, capsys):
    scene, labels = inputs
    straight = tmp_path / "straight.safetensors"
    assert main(_argv(tiny_base, scene, labels, straight)) == 0
    out = capsys.readouterr().out
    assert "3 bridge(s) labelled on 1 scene(s); 1 polygon(s) on no scene" in out
    assert "kept from the base model (0.05)" in out

    # Ctrl-C in a real process once it has logged an iteration: it saves, exits 130, and resumes
    resumed = tmp_path / "resumed.safetensors"
    argv = _argv(tiny_base, scene, labels, resumed)
    log = Path(str(resumed) + ".finetune") / "log.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "serving.cli.main", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not log.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, text
    assert "interrupted; saved" in text and "run the same command again to resume" in text
    assert not resumed.exists()
    assert main(argv) == 0
    assert "resumed from" in capsys.readouterr().out

    a, b = read_checkpoint(straight), read_checkpoint(resumed)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    lineage = b["meta"]["finetune"]
    assert b["meta"]["finetuned_from"]["model"] == str(tiny_base)
    assert set(lineage["files"]) == {str(scene), str(labels)} and lineage["bridges_trained"] == 3
    base = read_checkpoint(tiny_base)["state_dict"]
    heads = [k for k in base if ".roi_head." in k and base[k].is_floating_point()]
    trunk = [k for k in base if ".backbone." in k and base[k].is_floating_point()]
    assert any(not torch.equal(base[k], b["state_dict"][k]) for k in heads)  # it learnt
    assert all(torch.equal(base[k], b["state_dict"][k]) for k in trunk)  # only the box heads

    assert main(["detect", str(scene), "--model", str(resumed), "-o", str(tmp_path / "found.gpkg"), "-q"]) == 0
    assert (tmp_path / "found.gpkg").exists()


def test_the_fine_tuned_model_keeps_the_base_models_gsd_range(inputs, tiny_base, tmp_path):
    """It was trained on the grid that range gives the scenes, so it must run on that grid too."""
    scene, labels = inputs
    ckpt = read_checkpoint(tiny_base)
    gsd_m = {"min": 0.25, "best": 0.5, "max": 8.0, "max_upsample": 2.0}  # the 0.5 m scene runs as it is
    base = save_checkpoint(tmp_path / "ranged.pth", load_model(tiny_base)[0], meta={**ckpt["meta"], "gsd_m": gsd_m})
    out = tmp_path / "ranged.safetensors"
    assert main([*_argv(base, scene, labels, out)[:-5], "--epochs", "1", "--no-progress"]) == 0
    assert read_checkpoint(out)["meta"]["gsd_m"] == gsd_m


def test_a_work_folder_of_other_inputs_is_refused(inputs, tiny_base, tmp_path, capsys):
    scene, labels = inputs
    out = tmp_path / "m.safetensors"
    argv = _argv(tiny_base, scene, labels, out)
    assert main([*argv, "--max-iters", "1"]) == 0
    assert "stopped at --max-iters 1" in capsys.readouterr().out
    code = main([*argv[:-5], "--epochs", "3", "--no-progress"])  # other settings, same folder
    err = capsys.readouterr().err
    assert code == 2 and "holds a fine-tuning run of other inputs or settings" in err
    os.remove(Path(str(out) + ".finetune") / "finetune.json")
    assert main(argv) == 2 and "is not empty and holds no fine-tuning run" in capsys.readouterr().err


def test_the_int8_trunk_is_kept_or_made_again_from_the_new_weights(inputs, tiny_base, tmp_path, capsys):
    from hbdnet.calibration import stored_int8_trunks
    from hbdnet.checkpoint import load_model, read_int8_trunks, save_safetensors

    scene, labels = inputs
    model, meta = load_model(tiny_base)
    images = labelled_scenes([scene], labels).images
    base = save_safetensors(tmp_path / "base.safetensors", model, meta=meta, score_thr=0.05,
                            int8_trunks=stored_int8_trunks(model, "float32", images, only=("local",)))
    heads = tmp_path / "heads.safetensors"
    assert main([*_argv(base, scene, labels, heads)[:-5], "--epochs", "1", "--no-progress"]) == 0
    assert "int8 trunk kept from the base model (local)" in capsys.readouterr().out
    assert read_int8_trunks(heads) == read_int8_trunks(base)

    rpn = tmp_path / "rpn.safetensors"
    assert main([*_argv(base, scene, labels, rpn)[:-5], "--epochs", "1", "--train", "rpn_head,roi_head",
                 "--no-progress"]) == 0
    assert "int8 trunk made again (local), calibrated on windows of your scenes" in capsys.readouterr().out
    made = read_int8_trunks(rpn)
    assert set(made) == {"local"} and made["local"] != read_int8_trunks(base)["local"]
    assert main(["detect", str(scene), "--model", str(rpn), "--runtime", "int8", "-o", str(tmp_path / "f.gpkg"),
                 "-q"]) == 0


def test_a_geopackage_with_qgis_styles_reads_its_bridge_layer(tmp_path):
    """hbdnet detect writes a layer_styles table beside the bridges (QGIS's default style): the labels are
    the other layer, read without a warning."""
    import warnings

    scene = write_scene(tmp_path / "scene.tif")
    path = tmp_path / "edited.gpkg"
    pyogrio.raw.write(path, None, [np.array(["<qml/>"], dtype=object)], ["styleQML"], layer="layer_styles")
    pyogrio.raw.write(path, shapely.to_wkb(pixel_polygons_to_lonlat(BRIDGES)), [], [], layer="edited",
                      geometry_type="Polygon", crs="EPSG:4326", append=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert labelled_scenes([scene], path).bridges == 3
