"""A real Ray cluster of two nodes on this machine for the tests of this folder (``ray start --head`` and
``ray start --address``; ``serving.testing.ray_cluster``), a tiny real model and small real GeoTIFFs.

The cluster is started once for the module (about 8 s) and stopped at its end, every process it
started killed by PID and its folder removed; the teardown fails the tests if any is left."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from serving.testing.ray_cluster import LocalCluster, ray_cli
from serving.testing.simulate import texture

CPUS = 2  # logical CPUs of each node: a 2-actor pool then has one actor on each


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A head (resource ``node_head``) and a second node (``node_b``), 2 CPUs each, token authentication;
    ``cluster.env`` is what a driver needs to join it at ``cluster.address``."""
    if ray_cli() is None:
        pytest.skip("the ray command is not installed (pip install 'ray[default]')")
    if not sys.platform.startswith("linux"):
        pytest.skip("the cluster's processes are found by their session in /proc (Linux only)")
    c = LocalCluster()
    try:
        c.start_head("node_head", CPUS)
        c.add_node("node_b", CPUS)
        c.wait_nodes()
        yield c
    finally:
        left = c.stop()
    assert not left, f"cluster processes left running: {left}"
    assert not c.root.exists()


@pytest.fixture
def two_nodes(cluster: LocalCluster) -> LocalCluster:
    """The cluster with both nodes up (a test before may have killed ``node_b``)."""
    cluster.ensure_node("node_b")
    return cluster


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A real hbdnet checkpoint with random weights, 128 px windows and at most 4 boxes a window, so that
    a small scene has ~100 windows and the merge stays quick."""
    import torch

    from hbdnet.checkpoint import save_checkpoint
    from hbdnet.models.build import ModelConfig
    from hbdnet.models.hbdnet import HBDNet, HBDNetConfig

    def tiny(**kw) -> ModelConfig:
        return ModelConfig(backbone="resnet_tiny", fpn_channels=16, rpn_feat_channels=16, fc_channels=32,
                           rpn_nms_pre=100, rpn_max_per_img=50, max_per_img=4, score_thr=0.0, **kw)

    torch.manual_seed(0)
    cfg = HBDNetConfig(local=tiny(), global_detector=tiny(finest_scale=56.0, use_ssrw=True), window=128, overlap=32)
    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pth", HBDNet(cfg), meta={"name": "tiny"})


def write_scenes(folder: Path, sizes: list[tuple[int, int]]) -> Path:
    """Textured uint8 GeoTIFFs ``s0.tif`` ... of ``sizes`` (width, height), side by side in UTM 31N."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        with rasterio.open(folder / f"s{i}.tif", "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8",
                           crs="EPSG:32631", transform=Affine(0.5, 0, 500000.0 + 1000 * i, 0, -0.5, 5800000.0),
                           tiled=True, blockxsize=128, blockysize=128) as ds:
            ds.write(texture(3, h, w, dtype=np.uint8, seed=i))
    return folder
