import json

import pytest
import torch
import yaml

from hbdnet.checkpoint import load_model, read_checkpoint
from hbdnet.config_io import ConfigError, load_yaml, to_dict
from hbdnet.training.config import ExperimentConfig, StageConfig, load_experiment
from hbdnet.training.trainer import lr_at, train
from serving.cli.main import main


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
    assert read_checkpoint(work / "local" / "latest.pth")["training"]["iteration"] == 12
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert {entry["stage"] for entry in log} == {"local", "coarse"}
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in log)
    assert {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"} <= set(log[0])
    # the coarse stage moved away from the local detector it started from
    model, meta = load_model(out)
    assert meta["stages"] == ["local", "coarse"] and meta["complete"] is True
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


def _stage_state(path):
    """Everything a resumed run continues from: iteration, weights, optimizer state, lr, RNG."""
    ckpt = read_checkpoint(path)
    return ckpt["training"], ckpt["state_dict"]


def _assert_same_state(a, b):
    (ta, wa), (tb, wb) = a, b
    assert (ta["epoch"], ta["batch"], ta["iteration"]) == (tb["epoch"], tb["batch"], tb["iteration"])
    assert ta["lr"] == tb["lr"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    oa, ob = ta["optimizer"]["state"], tb["optimizer"]["state"]
    assert oa.keys() == ob.keys() and len(oa) > 0
    for k in oa:
        assert torch.equal(oa[k]["momentum_buffer"], ob[k]["momentum_buffer"]), k
    assert torch.equal(ta["rng"]["torch"], tb["rng"]["torch"])


def _augmented(cfg):
    from dataclasses import replace

    from hbdnet.data.augment import AugmentConfig

    # every random draw of the data path is on: a resumed run must redraw exactly the same
    return replace(cfg, data=replace(cfg.data, augment=AugmentConfig(enabled=True, crop_prob=0.5, blur_prob=0.5)))


def test_resume_equals_an_uninterrupted_run(tiny_dota, tiny_experiment, tmp_path):
    """Stopped at --max-iters, by Ctrl-C, or killed after a periodic save: resuming ends where one run does."""
    import os
    import signal
    from dataclasses import replace

    from hbdnet.training.trainer import TrainingInterrupted

    cfg = _augmented(tiny_experiment())
    stop = 8  # 6 iterations per epoch: the resumed runs restart inside epoch 1 and cross into epoch 2
    straight = tmp_path / "straight"
    train(cfg, tiny_dota, straight, stages=["local"], max_iters=stop, progress=False)
    reference = _stage_state(straight / "local" / "latest.pth")
    assert reference[0]["iteration"] == stop and reference[0]["epoch"] == 1 and reference[0]["batch"] == 2

    def resume(cfg, work, first):
        """Resume to ``stop``; the resumed run must do only the iterations left (not start over)."""
        done = []
        train(cfg, tiny_dota, work, stages=["local"], max_iters=stop, progress=False,
              on_iteration=lambda trainer, it: done.append(it))
        assert done == list(range(first, stop + 1))
        _assert_same_state(_stage_state(work / "local" / "latest.pth"), reference)

    # 1. --max-iters, then the same command without a smaller limit
    work = tmp_path / "maxiters"
    train(cfg, tiny_dota, work, stages=["local"], max_iters=3, progress=False)
    assert read_checkpoint(work / "local" / "latest.pth")["training"]["iteration"] == 3
    assert not (work / "local" / "final.pth").exists()
    resume(cfg, work, 4)

    # 2. Ctrl-C: the iteration finishes, latest.pth is written, TrainingInterrupted is raised
    work = tmp_path / "ctrlc"

    def press_ctrl_c(trainer, iteration):
        if iteration == 4:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as info:
        train(cfg, tiny_dota, work, stages=["local"], progress=False, on_iteration=press_ctrl_c)
    assert info.value.iteration == 4
    assert read_checkpoint(work / "local" / "latest.pth")["training"]["iteration"] == 4
    resume(cfg, work, 5)

    # 3. killed: only the periodic checkpoint (every 2 iterations) is there
    work = tmp_path / "killed"
    periodic = replace(cfg, train=replace(cfg.train, checkpoint_every=2))

    def crash(trainer, iteration):
        if iteration == 5:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        train(periodic, tiny_dota, work, stages=["local"], progress=False, on_iteration=crash)
    assert read_checkpoint(work / "local" / "latest.pth")["training"]["iteration"] == 4
    resume(periodic, work, 5)


def test_coarse_stage_starts_from_the_local_detector(tiny_dota, tiny_experiment, tmp_path):
    """With a zero learning rate the coarse stage's end is its start: the local detector's weights."""
    from dataclasses import replace

    cfg = tiny_experiment()
    cfg = replace(cfg, stages=[cfg.stages[0], replace(cfg.stages[1], lr=0.0)])
    work = tmp_path / "run"
    model, _ = load_model(train(cfg, tiny_dota, work, progress=False))
    local = model.local_detector.state_dict()
    coarse = model.global_detectors[0].state_dict()
    assert local.keys() == coarse.keys()
    for k in local:
        assert torch.equal(local[k], coarse[k]), k
    # ... and the local detector is the one the local stage trained
    final = read_checkpoint(work / "local" / "final.pth")["state_dict"]
    for k, v in local.items():
        assert torch.equal(final[f"local_detector.{k}"], v), k


def test_warmup_scales_with_the_stage():
    from hbdnet.training.config import OptimConfig
    from hbdnet.training.trainer import warmup_length

    optim = OptimConfig()  # the authors' 500 iterations at most, 5 % of the stage at most
    assert warmup_length(optim, 24 * 19) == 23  # 30 NWPU images: a warm-up well inside the stage
    assert warmup_length(optim, 24 * 45_000) == 500  # GLH-Bridge: the authors' warm-up
    assert warmup_length(OptimConfig(warmup_fraction=0.0), 1000) == 0


def test_train_and_eval_through_the_cli(tiny_dota, tiny_experiment, tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(to_dict(tiny_experiment())))
    work = tmp_path / "run"
    argv = ["train", "--config", str(cfg), "--data", str(tiny_dota), "--work-dir", str(work), "--no-progress"]
    assert main([*argv, "--max-iters", "2"]) == 0
    out = capsys.readouterr().out
    assert "stopped at iteration 2/12" in out and "s/it" in out
    assert read_checkpoint(work / "local" / "latest.pth")["training"]["iteration"] == 2
    assert main(argv) == 0  # resumes and finishes both stages
    out = capsys.readouterr().out
    assert "resumed from" in out and "iteration 2/12" in out
    assert read_checkpoint(work / "model.pth")["meta"]["complete"] is True
    assert main(["eval", "--model", str(work / "model.pth"), "--data", str(tiny_dota),
                 "--output", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert {"AP50", "AP75", "mAP"} <= set(metrics)
    assert "AP50:" in capsys.readouterr().out


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


def test_global_stage_learns_from_local_windows_and_synthetic_ones(tiny_dota, tiny_experiment, tmp_path):
    from dataclasses import replace

    from hbdnet.data.dota import load_dota_folder
    from hbdnet.training.trainer import make_dataset

    cfg = _augmented(tiny_experiment())
    coarse = replace(cfg.stages[1], data_levels=[0, 1], synthetic=3, synthetic_size=96)
    cfg = replace(cfg, stages=[cfg.stages[0], coarse])
    data = make_dataset(cfg, load_dota_folder(tiny_dota), coarse)
    assert len(data) == data.num_windows + 3
    levels = {data[i].meta["level"] for i in range(len(data))}
    assert levels == {0, 1}  # level-0 windows, and the synthetic ones stand for level 1
    assert all(data[i].meta["detector_level"] == 1 for i in range(len(data)))  # all for the global detector
    synthetic = data[len(data) - 1]
    assert synthetic.meta["synthetic"] and synthetic.image.shape[-1] <= 96
    work = tmp_path / "run"
    train(cfg, tiny_dota, work, max_iters=2, progress=False)
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [e["iter"] for e in log if e["stage"] == "coarse"] == [1, 2]


def test_fine_tuning_starts_from_a_trained_model(tiny_dota, tiny_experiment, tmp_path):
    """With a zero learning rate a run started from a trained model ends where it started."""
    from dataclasses import replace

    cfg = tiny_experiment()
    first = load_model(train(cfg, tiny_dota, tmp_path / "first", max_iters=2, progress=False))[0].state_dict()
    still = replace(cfg, init_weights=str(tmp_path / "first" / "model.pth"),
                    stages=[replace(s, lr=0.0, init_from="none") for s in cfg.stages])
    tuned = load_model(train(still, tiny_dota, tmp_path / "tuned", progress=False))[0].state_dict()
    assert tuned.keys() == first.keys()
    for k in first:
        assert torch.equal(tuned[k], first[k]), k
    fresh = load_model(train(replace(still, init_weights=None), tiny_dota, tmp_path / "fresh",
                             progress=False))[0].state_dict()
    assert any(not torch.equal(fresh[k], first[k]) for k in first)


def test_fine_tuning_refuses_another_architecture(tiny_dota, tiny_experiment, tmp_path, capsys):
    from dataclasses import replace

    cfg = tiny_experiment()
    model = train(cfg, tiny_dota, tmp_path / "first", max_iters=1, progress=False)
    wider = replace(cfg, model=replace(cfg.model, local=replace(cfg.model.local, fc_channels=48)))
    path = tmp_path / "wider.yaml"
    path.write_text(yaml.safe_dump(to_dict(wider)))
    argv = ["train", "--config", str(path), "--data", str(tiny_dota), "--work-dir", str(tmp_path / "w"), "--no-progress"]
    assert main([*argv, "--init", str(model)]) == 2
    err = capsys.readouterr().err
    assert "is not this config's architecture" in err and "local_detector.roi_head" in err and "Traceback" not in err
    assert main([*argv, "--init", str(tmp_path / "missing.pth")]) == 2
    assert "model file not found" in capsys.readouterr().err


@pytest.mark.parametrize("part, prefix", [("roi_head", "local_detector.roi_head."),
                                          ("roi_classifier", "local_detector.roi_head.bbox_head.fc_cls.")])
def test_a_stage_trains_only_its_parts(tiny_dota, tiny_experiment, tmp_path, part, prefix):
    from dataclasses import replace

    from hbdnet.training.trainer import Trainer

    cfg = tiny_experiment()
    first = train(cfg, tiny_dota, tmp_path / "first", max_iters=2, progress=False)
    start = load_model(first)[0].state_dict()
    heads = replace(cfg, init_weights=str(first),
                    stages=[replace(cfg.stages[0], parts=[part]), replace(cfg.stages[1], init_from="none")])
    trainer = Trainer(heads, tiny_dota, tmp_path / "heads", progress=False)
    tuned = load_model(trainer.run())[0].state_dict()
    local = [k for k in start if k.startswith("local_detector.")]
    moved = {k for k in local if not torch.equal(tuned[k], start[k])}
    assert moved and all(k.startswith(prefix) for k in moved), sorted(moved)[:5]
    # the parts frozen for the stage are trainable again after it
    assert all(p.requires_grad for p in trainer.model.local_detector.rpn_head.parameters())
    with pytest.raises(ValueError, match="parts must be some of"):
        replace(cfg.stages[0], parts=["head"])
