"""The shipping format: safetensors weights with the config and a default operating point, no pickle."""

import json
import pickle

import pytest
import torch

import hbdnet.checkpoint as checkpoint
from hbdnet.checkpoint import (
    FP16_MIN_NUMEL,
    CheckpointError,
    bundled_model_path,
    load_model,
    read_checkpoint,
    resolve_model_path,
    save_checkpoint,
    save_safetensors,
)
from hbdnet.models.hbdnet import HBDNet, HBDNetConfig
from serving.cli.main import main

from tests.models.conftest import tiny_config


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    model = HBDNet(HBDNetConfig(local=tiny_config(), global_detector=tiny_config(finest_scale=56.0, use_ssrw=True),
                                window=128, overlap=32)).eval()
    # random, non-zero weights everywhere, so that a dropped or mixed-up tensor changes the output
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


def _image():
    g = torch.Generator().manual_seed(1)
    img = torch.randint(0, 60, (3, 128, 128), generator=g, dtype=torch.uint8)
    img[:, 50:60, 20:110] = 230  # a bright bar
    return img


def _outputs(model):
    out = []
    for level in (0, 1):
        det = model.detect([_image()], level)[0]
        out.append((det["boxes"], det["scores"]))
    return out


def test_safetensors_round_trip_without_pickle(tiny_model, tmp_path, monkeypatch):
    path = save_safetensors(tmp_path / "m.safetensors", tiny_model, meta={"name": "tiny"}, score_thr=0.42)
    expected = _outputs(tiny_model)
    assert sum(len(b) for b, _ in expected) > 0

    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    model, meta = load_model(path)
    assert meta == {"name": "tiny", "score_thr": 0.42}
    assert model.cfg == tiny_model.cfg
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    for (b0, s0), (b1, s1) in zip(expected, _outputs(model)):
        torch.testing.assert_close(b1, b0, rtol=0, atol=0)
        torch.testing.assert_close(s1, s0, rtol=0, atol=0)
    # the file is a plain safetensors file: its header is JSON with our metadata
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8:8 + header_len])
    assert header["__metadata__"]["format"] == "hbdnet"
    assert json.loads(header["__metadata__"]["config"])["window"] == 128


def test_fp16_stores_the_large_weights_in_half_and_keeps_the_detections_close(tiny_model, tmp_path):
    from safetensors import safe_open

    full = save_safetensors(tmp_path / "f32.safetensors", tiny_model)
    half = save_safetensors(tmp_path / "f16.safetensors", tiny_model, dtype="float16")
    large = [v for v in tiny_model.state_dict().values() if v.is_floating_point() and v.numel() >= FP16_MIN_NUMEL]
    assert large  # the tiny model has some, so that both kinds are tested
    saved = 2 * sum(v.numel() for v in large)
    assert full.stat().st_size - saved - 4096 < half.stat().st_size <= full.stat().st_size - saved
    with safe_open(str(half), "pt") as f:
        for key in f.keys():
            t = f.get_tensor(key)
            if t.is_floating_point():
                assert t.dtype == (torch.float16 if t.numel() >= FP16_MIN_NUMEL else torch.float32), key
    ckpt = read_checkpoint(half)
    assert ckpt["dtype"] == "float16"
    model, _ = load_model(half)
    for k, v in tiny_model.state_dict().items():
        w = model.state_dict()[k]
        assert w.dtype == v.dtype, k  # widened back to float32; counters stay integers
        torch.testing.assert_close(w, v, rtol=1e-3, atol=1e-4)
    for (b0, s0), (b1, s1) in zip(_outputs(tiny_model), _outputs(model)):
        n = min(len(s0), len(s1), 5)
        torch.testing.assert_close(s1[:n], s0[:n], rtol=0, atol=2e-2)


def test_pth_and_safetensors_load_alike(tiny_model, tmp_path):
    pth = save_checkpoint(tmp_path / "m.pth", tiny_model, meta={"name": "tiny"})
    st = save_safetensors(tmp_path / "m.safetensors", tiny_model, meta={"name": "tiny"})
    a, b = read_checkpoint(pth), read_checkpoint(st)
    assert a["config"] == b["config"] and a["meta"] == b["meta"]
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_not_an_hbdnet_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match="without hbdnet's metadata"):
        read_checkpoint(other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_checkpoint(junk)
    with pytest.raises(ValueError, match="score_thr"):
        save_safetensors(tmp_path / "x.safetensors", HBDNet(HBDNetConfig(local=tiny_config(), global_detector=tiny_config())), score_thr=2.0)


def test_bundled_models_by_name(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(CheckpointError, match="none is bundled"):
        bundled_model_path("default")
    save_safetensors(tmp_path / "default.safetensors", tiny_model, score_thr=0.3)
    assert bundled_model_path() == tmp_path / "default.safetensors"
    assert resolve_model_path("default") == tmp_path / "default.safetensors"
    with pytest.raises(CheckpointError, match="bundled: default"):
        bundled_model_path("other")
    with pytest.raises(CheckpointError, match="not a model name"):
        bundled_model_path("../default")
    with pytest.raises(CheckpointError, match="not found"):
        resolve_model_path(str(tmp_path / "missing.pth"))
    _, meta = load_model(resolve_model_path("default"))
    assert meta["score_thr"] == 0.3


def test_export_cli(tiny_model, tmp_path, capsys, monkeypatch):
    pth = save_checkpoint(tmp_path / "model.pth", tiny_model, meta={"name": "tiny", "stage": "global"})
    out = tmp_path / "w" / "default.safetensors"
    assert main(["export", str(pth), "-o", str(out), "--fp16", "--score-thr", "0.35", "--note", "val_AP50=0.7"]) == 0
    assert "float16, score_thr 0.35" in capsys.readouterr().out
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("pickle was used"))
    model, meta = load_model(out)
    assert meta == {"name": "tiny", "source": "model.pth", "val_AP50": "0.7", "score_thr": 0.35}
    assert read_checkpoint(out)["dtype"] == "float16"
    assert main(["export", str(pth), "-o", str(tmp_path / "x.pth")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err


def test_light_model_loads_without_reading_imagenet_weights(tmp_path, monkeypatch):
    """A model trained from ImageNet weights holds all its weights: loading it reads nothing else."""
    light = tiny_config(backbone="efficientnet_lite0", pretrained=True)
    model = HBDNet(HBDNetConfig(local=light, global_detector=light, window=128, overlap=32)).eval()
    path = save_safetensors(tmp_path / "light.safetensors", model, dtype="float16")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("pickle was used"))
    loaded, _ = load_model(path)
    assert loaded.cfg.local.pretrained  # the recorded config is kept as trained
    w = model.local_detector.backbone.state_dict()
    for k, v in loaded.local_detector.backbone.state_dict().items():
        torch.testing.assert_close(v, w[k], rtol=1e-3, atol=1e-3)


def test_window_detector_from_a_bundled_name_carries_the_operating_point(tiny_model, tmp_path, monkeypatch):
    from hbdnet.inference import load_window_detector

    monkeypatch.setattr(checkpoint, "WEIGHTS_DIR", tmp_path)
    save_safetensors(tmp_path / "default.safetensors", tiny_model, meta={"name": "tiny"}, score_thr=0.3)
    det = load_window_detector("default")
    assert det.name == "tiny" and det.default_score_thr == 0.3
    save_checkpoint(tmp_path / "plain.pth", tiny_model)
    assert load_window_detector(tmp_path / "plain.pth").default_score_thr is None
