"""Conversion of the authors' mmrotate checkpoint, on synthetic checkpoints with their key names and shapes.

The key list is generated here from method doc section 11 (not from our model), so a renamed module
on our side makes these tests fail.
"""

import pytest
import torch

from hbdnet.checkpoint import load_model
from serving.cli.main import main
from hbdnet.convert import convert_state_dict, read_authors_state_dict


def resnet50_keys(prefix: str) -> dict[str, tuple[int, ...]]:
    keys = {f"{prefix}.conv1.weight": (64, 3, 7, 7)}

    def bn(name: str, c: int) -> None:
        for p in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{name}.{p}"] = (c,)
        keys[f"{name}.num_batches_tracked"] = ()

    bn(f"{prefix}.bn1", 64)
    in_c = 64
    for layer, (blocks, width) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512]), start=1):
        for i in range(blocks):
            b = f"{prefix}.layer{layer}.{i}"
            keys[f"{b}.conv1.weight"] = (width, in_c, 1, 1)
            keys[f"{b}.conv2.weight"] = (width, width, 3, 3)
            keys[f"{b}.conv3.weight"] = (width * 4, width, 1, 1)
            for j, c in ((1, width), (2, width), (3, width * 4)):
                bn(f"{b}.bn{j}", c)
            if i == 0:
                keys[f"{b}.downsample.0.weight"] = (width * 4, in_c, 1, 1)
                bn(f"{b}.downsample.1", width * 4)
            in_c = width * 4
    return keys


def detector_keys(suffix: str = "", global_prefix: str = "") -> dict[str, tuple[int, ...]]:
    name = lambda part: f"{global_prefix}{part}{suffix}"  # noqa: E731
    keys = resnet50_keys(name("backbone"))
    for i, c in enumerate([256, 512, 1024, 2048]):
        keys[f"{name('neck')}.lateral_convs.{i}.conv.weight"] = (256, c, 1, 1)
        keys[f"{name('neck')}.lateral_convs.{i}.conv.bias"] = (256,)
        keys[f"{name('neck')}.fpn_convs.{i}.conv.weight"] = (256, 256, 3, 3)
        keys[f"{name('neck')}.fpn_convs.{i}.conv.bias"] = (256,)
    r = name("rpn_head")
    keys.update({f"{r}.rpn_conv.weight": (256, 256, 3, 3), f"{r}.rpn_conv.bias": (256,),
                 f"{r}.rpn_cls.weight": (3, 256, 1, 1), f"{r}.rpn_cls.bias": (3,),
                 f"{r}.rpn_reg.weight": (18, 256, 1, 1), f"{r}.rpn_reg.bias": (18,)})
    h = name("roi_head") + ".bbox_head"
    keys.update({f"{h}.shared_fcs.0.weight": (1024, 12544), f"{h}.shared_fcs.0.bias": (1024,),
                 f"{h}.shared_fcs.1.weight": (1024, 1024), f"{h}.shared_fcs.1.bias": (1024,),
                 f"{h}.fc_cls.weight": (2, 1024), f"{h}.fc_cls.bias": (2,),
                 f"{h}.fc_reg.weight": (5, 1024), f"{h}.fc_reg.bias": (5,)})
    return keys


def fusion_keys() -> dict[str, tuple[int, ...]]:
    keys = {}
    for k in range(5):
        keys[f"fusion_convs.{k}.conv.weight"] = (256, (k + 2) * 256, 3, 3)
        keys[f"fusion_convs.{k}.conv.bias"] = (256,)
    return keys


def make_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randint(0, 9, s, generator=g) if k.endswith("num_batches_tracked") else torch.randn(s, generator=g))
            for k, s in shapes.items()}


@pytest.fixture(scope="module")
def released_state():
    shapes = {**detector_keys(), **detector_keys(global_prefix="global_"), **fusion_keys()}
    return make_state(shapes)


def test_released_layout_has_the_documented_size(released_state):
    # section 11: 706 tensors, about 94.5 M parameters excluding BN running statistics
    assert len(released_state) == 706
    n = sum(v.numel() for k, v in released_state.items() if "running" not in k and "num_batches" not in k)
    assert abs(n / 1e6 - 94.5) < 0.6


def test_released_checkpoint_converts_completely(released_state):
    model, report = convert_state_dict(released_state)
    assert report.family == "shared" and report.ok, report.lines()
    assert len(report.unused_fusion) == 10
    ours = model.state_dict()
    assert torch.equal(ours["local_detector.backbone.layer3.5.conv2.weight"], released_state["backbone.layer3.5.conv2.weight"])
    assert torch.equal(ours["global_detectors.0.roi_head.bbox_head.fc_reg.weight"],
                       released_state["global_roi_head.bbox_head.fc_reg.weight"])
    assert torch.equal(ours["local_detector.rpn_head.rpn_reg.weight"], released_state["rpn_head.rpn_reg.weight"])
    # the global RoI head keeps the authors' finest_scale 56 and SSRW
    assert model.global_detectors[0].roi_head.bbox_roi_extractor.finest_scale == 56
    assert model.global_detectors[0].roi_head.use_ssrw


def test_iff_keeps_the_fusion_convs(released_state):
    model, report = convert_state_dict(released_state, use_iff=True)
    assert report.ok and not report.unused_fusion
    assert torch.equal(model.state_dict()["fusion.fusion_convs.3.conv.weight"], released_state["fusion_convs.3.conv.weight"])


def test_per_level_family():
    shapes = detector_keys()
    for d in (2, 4, 8, 16):
        shapes.update(detector_keys(suffix=f"_d{d}"))
    state = make_state(shapes, seed=1)
    model, report = convert_state_dict(state)
    assert report.family == "per_level" and report.ok, report.lines()
    assert len(model.global_detectors) == 4
    assert torch.equal(model.state_dict()["global_detectors.2.neck.fpn_convs.1.conv.weight"],
                       state["neck_d8.fpn_convs.1.conv.weight"])
    assert model.detector_for_level(3) is model.global_detectors[2]
    assert model.detector_for_level(7) is model.global_detectors[3]


def test_mismatches_are_reported(released_state):
    state = dict(released_state)
    state["rpn_head.rpn_cls.weight"] = torch.zeros(6, 256, 1, 1)  # two classes per anchor: wrong head
    state["roi_head.mask_head.conv.weight"] = torch.zeros(1)
    del state["global_neck.fpn_convs.0.conv.bias"]
    _, report = convert_state_dict(state)
    assert not report.ok
    assert report.misshaped == ["rpn_head.rpn_cls.weight: (6, 256, 1, 1) vs (3, 256, 1, 1)"]
    assert report.unmatched == ["roi_head.mask_head.conv.weight"]
    assert report.missing == ["global_detectors.0.neck.fpn_convs.0.conv.bias"]


def test_cli_round_trip(tmp_path, released_state, capsys):
    src = tmp_path / "Oriented_rcnn_HBDNet.pth"
    # mmcv layout: {'state_dict': ...} with DataParallel's "module." prefix and no 'meta' (issue #5)
    torch.save({"state_dict": {f"module.{k}": v for k, v in released_state.items()}}, src)
    assert set(read_authors_state_dict(src)) == set(released_state)
    out = tmp_path / "hbdnet.pth"
    assert main(["convert", str(src), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "key family: shared" in text and "fusion_convs keys not used" in text
    model, meta = load_model(out)
    assert meta["converted_from"] == "mmrotate"
    assert torch.equal(model.state_dict()["global_detectors.0.backbone.conv1.weight"],
                       released_state["global_backbone.conv1.weight"])


def test_cli_errors(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing.pth"), "-o", str(tmp_path / "o.pth")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    assert main(["convert", str(junk), "-o", str(tmp_path / "o.pth")]) == 2
    assert "cannot read" in capsys.readouterr().err
    partial = tmp_path / "partial.pth"
    torch.save({"backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}, partial)
    assert main(["convert", str(partial), "-o", str(tmp_path / "o.pth")]) == 3
    assert not (tmp_path / "o.pth").exists()
