import json

import pytest
import torch
import yaml

from hbdnet.checkpoint import load_model, read_checkpoint
from serving.cli.main import main
from hbdnet.config_io import ConfigError, load_yaml, to_dict
from hbdnet.training.config import ExperimentConfig, StageConfig, load_experiment
from hbdnet.training.trainer import lr_at, train


def test_lr_schedule_warmup_and_steps():
    stage = StageConfig("s", [0], epochs=24, lr=0.01, lr_steps=[16, 22])
    assert lr_at(stage, 500, 1 / 3, 0, 0) == pytest.approx(0.01 / 3)
    assert lr_at(stage, 500, 1 / 3, 0, 250) == pytest.approx(0.01 * (1 / 3 + 2 / 3 * 0.5))
    assert lr_at(stage, 500, 1 / 3, 3, 600) == pytest.approx(0.01)
    assert lr_at(stage, 500, 1 / 3, 16, 9000) == pytest.approx(0.001)
    assert lr_at(stage, 500, 1 / 3, 23, 9000) == pytest.approx(0.0001)


def test_stages_checkpoints_log_and_resume(tiny_dota, tiny_experiment, tmp_path):
    cfg = tiny_experiment()
    work = tmp_path / "run"
    out = train(cfg, tiny_dota, work, progress=False)
    assert out == work / "model.pth"
    for stage in ("local", "coarse"):
        assert (work / stage / "final.pth").exists()
    assert (work / "local" / "epoch_1.pth").exists() and (work / "local" / "epoch_2.pth").exists()
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert {entry["stage"] for entry in log} == {"local", "coarse"}
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in log)
    assert {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"} <= set(log[0])
    # the coarse stage started from the local detector, then moved away from it
    model, meta = load_model(out)
    assert meta["stages"] == ["local", "coarse"]
    local_w = model.local_detector.rpn_head.rpn_conv.weight
    global_w = model.global_detectors[0].rpn_head.rpn_conv.weight
    assert not torch.equal(local_w, global_w)
    local_final = read_checkpoint(work / "local" / "final.pth")["state_dict"]
    assert torch.equal(local_final["local_detector.rpn_head.rpn_conv.weight"], local_w)
    # the saved config reloads into the same experiment
    assert load_yaml(ExperimentConfig, work / "config.yaml") == cfg

    # resume: a finished run does no more training and reproduces the same model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_log = len(log)
    train(cfg, tiny_dota, work, progress=False)
    after, _ = load_model(work / "model.pth")
    assert all(torch.equal(before[k], v) for k, v in after.state_dict().items())
    assert len((work / "log.jsonl").read_text().splitlines()) == n_log


def test_interrupted_stage_resumes_from_latest(tiny_dota, tiny_experiment, tmp_path):
    cfg = tiny_experiment()
    work = tmp_path / "run"
    train(cfg, tiny_dota, work, stages=["local"], max_iters=1, progress=False)
    latest = read_checkpoint(work / "local" / "latest.pth")
    assert latest["training"]["iteration"] == 1
    (work / "local" / "final.pth").unlink()  # as if the run had been killed before the stage finished
    train(cfg, tiny_dota, work, stages=["local"], progress=False)
    state = read_checkpoint(work / "local" / "latest.pth")["training"]
    assert state["epoch"] == 2 and state["iteration"] > 1


def test_iff_per_level_training(tiny_dota, tiny_experiment, tmp_path):
    cfg = tiny_experiment(use_iff=True, global_mode="per_level")
    work = tmp_path / "iff"
    train(cfg, tiny_dota, work, max_iters=2, progress=False)
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    local = [e for e in log if e["stage"] == "local"]
    # the global branch is trained on the context crops in the same step
    assert "loss_bbox_global" in local[0] and "loss_rpn_cls_global" in local[0]
    model, _ = load_model(work / "model.pth")
    assert model.fusion is not None and len(model.global_detectors) == 2


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs"
    names = sorted(p.name for p in root.glob("*.yaml"))
    assert {"hbdnet_r50_obb.yaml", "hbdnet_r50_hbb.yaml", "hbdnet_lite_cpu.yaml"} <= set(names)
    for name in names:
        cfg = load_experiment(root / name)
        assert cfg.stages and cfg.stages[0].levels == [0]
    faithful = load_experiment(root / "hbdnet_r50_obb.yaml")
    assert faithful.model.global_detector.finest_scale == 56 and faithful.model.global_detector.use_ssrw
    assert faithful.model.local.finest_scale == 16 and not faithful.model.local.use_ssrw
    assert load_experiment(root / "hbdnet_r50_hbb.yaml").model.local.task == "hbb"


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "model": {"local": {"backbone": "resnet51"}}}))
    with pytest.raises(ConfigError, match="resnet51"):
        load_experiment(bad)
    bad.write_text(yaml.safe_dump({"name": "x", "stages": [{"name": "s", "levels": [0], "epoch": 3}]}))
    with pytest.raises(ConfigError, match="unknown key"):
        load_experiment(bad)


def test_train_cli_errors(tiny_experiment, tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "none.yaml"), "--data", str(tmp_path)]) == 2
    assert "config file not found" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(to_dict(tiny_experiment())))
    assert main(["train", "--config", str(cfg), "--data", str(tmp_path / "nothing")]) == 2
    assert "data folder not found" in capsys.readouterr().err
