"""Bridge-free windows drawn afresh every epoch (``data.negatives_per_epoch``): a stage meets many
background images while each epoch grows by only that many items."""

from __future__ import annotations

import pytest

from hbdnet.data.dota import load_dota_folder
from hbdnet.training.data import TrainingSet
from hbdnet.training.trainer import make_dataset


def _negatives(data: TrainingSet, epoch: int) -> list[tuple[str, int, int, int]]:
    data.set_epoch(epoch)
    first = data.num_windows + data.num_synthetic
    out = []
    for i in range(first, len(data)):
        s = data[i]
        assert s.target["boxes"].shape == (0, 5)
        out.append((s.meta["image_id"], s.meta["level"], s.meta["col_off"], s.meta["row_off"]))
    return out


def test_negatives_are_drawn_afresh_each_epoch(tiny_dota, tiny_experiment):
    cfg = tiny_experiment()
    cfg.data.empty_fraction = 0.0
    images = load_dota_folder(tiny_dota)
    plain = make_dataset(cfg, images, cfg.stages[0])
    spare = len(plain.windows.spare)
    assert spare >= 4, "the tiny data set needs bridge-free windows for this test"
    cfg.data.negatives_per_epoch = 3
    data = make_dataset(cfg, images, cfg.stages[0])
    assert len(data) == len(plain) + 3 and data.negatives == 3
    draws = [_negatives(data, epoch) for epoch in range(6)]
    assert all(len(set(d)) == 3 for d in draws)  # no window twice in an epoch
    assert len({tuple(d) for d in draws}) > 1  # each epoch its own
    assert _negatives(data, 4) == draws[4]  # reproducible: a resumed epoch draws the same
    assert len(set().union(*draws)) > 3  # over the stage, more background than one epoch's


def test_negatives_are_capped_by_what_there_is(tiny_dota, tiny_experiment):
    cfg = tiny_experiment()
    images = load_dota_folder(tiny_dota)
    cfg.data.negatives_per_epoch = 10_000
    data = make_dataset(cfg, images, cfg.stages[0])
    assert data.negatives == len(data.windows.spare)
    with pytest.raises(ValueError, match="negatives must be >= 0"):
        TrainingSet(data.windows, negatives=-1)
