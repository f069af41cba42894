"""A real hbdnet checkpoint behind the engine: loaded from disk by the workers, run over the pyramid."""

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from hbdnet.checkpoint import save_checkpoint
from hbdnet.heap import is_glibc, release_free_heap
from hbdnet.inference import load_window_detector
from hbdnet.models.build import ModelConfig
from hbdnet.models.hbdnet import HBDNet, HBDNetConfig
from hbdnet.pyramid import PlanWindow
from serving.engine.detectors import ModelSpec
from serving.testing.engine_runs import detect_file as detect_scene


def tiny(**kw) -> ModelConfig:
    return ModelConfig(backbone="resnet_tiny", fpn_channels=16, rpn_feat_channels=16, fc_channels=32,
                       rpn_nms_pre=100, rpn_max_per_img=50, score_thr=0.0, **kw)


@pytest.fixture(params=[False, True], ids=["plain", "iff"])
def checkpoint(request, tmp_path):
    torch.manual_seed(0)
    cfg = HBDNetConfig(local=tiny(), global_detector=tiny(finest_scale=56.0, use_ssrw=True),
                       use_iff=request.param, window=128, overlap=32)
    return save_checkpoint(tmp_path / "tiny.pth", HBDNet(cfg), meta={"name": "tiny"})


@pytest.fixture
def scene(tmp_path):
    path = tmp_path / "scene.tif"
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, size=(3, 300, 420), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=420, height=300, count=3, dtype="uint8",
                       crs="EPSG:32631", transform=from_origin(500000, 5700000, 0.5, 0.5)) as ds:
        ds.write(data)
    return path


def test_checkpoint_runs_over_the_pyramid(checkpoint, scene):
    result = detect_scene(str(scene), ModelSpec(path=str(checkpoint)), workers=0,
                          window=128, overlap=32)
    # 300 x 420 with 128 px windows: levels 0..2 (420 -> 210 -> 105)
    assert {d.window.level for d in result.window_detections} == {0, 1, 2}
    n = len(result.boxes)
    assert result.boxes.shape == (n, 5) and result.scores.shape == (n,) and n > 0  # score_thr 0: random weights fire
    assert np.isfinite(result.boxes).all()
    assert set(np.unique(result.levels)) <= {0, 1, 2}


def test_fusing_model_needs_context_crops(tmp_path):
    torch.manual_seed(0)
    cfg = HBDNetConfig(local=tiny(), global_detector=tiny(), use_iff=True, window=128, overlap=32)
    det = load_window_detector(save_checkpoint(tmp_path / "iff.pth", HBDNet(cfg)))
    assert det.context_levels == 2 and det.context_size == 128
    image = np.zeros((3, 128, 128), np.uint8)
    with pytest.raises(ValueError, match="context crops"):
        det.detect([image], [PlanWindow(0, 1, 0, 0, 128, 128)])
    # a coarse-level window needs none
    assert len(det.detect([image], [PlanWindow(1, 2, 0, 0, 128, 128)])) == 1


@pytest.mark.skipif(not is_glibc(), reason="malloc_trim is glibc's")
def test_cpu_detector_gives_freed_heap_back(tmp_path, monkeypatch):
    """Fragmented freed memory is returned after a forward (the worker's footprint stays its live set)."""
    import psutil

    torch.manual_seed(0)
    cfg = HBDNetConfig(local=tiny(), global_detector=tiny(), window=128, overlap=32)
    det = load_window_detector(save_checkpoint(tmp_path / "m.pth", HBDNet(cfg)))
    calls = []
    monkeypatch.setattr("hbdnet.inference.release_free_heap", lambda: calls.append(1))
    det.detect([np.zeros((3, 128, 128), np.uint8)], [PlanWindow(0, 1, 0, 0, 128, 128)])
    assert calls == [1]

    proc = psutil.Process()
    # 64 KiB blocks come from the heap (below glibc's mmap threshold); every other one freed leaves
    # 200 MB of holes that malloc keeps unless trimmed.
    blocks = [bytearray(64 * 1024) for _ in range(6400)]
    del blocks[::2]
    before = proc.memory_info().rss
    release_free_heap()
    assert proc.memory_info().rss < before - 100 * 2**20
    del blocks
