"""A stage's training data: its windows (and synthetic windows), augmented reproducibly.

Every random draw of an item comes from a generator seeded by ``(seed, epoch, index)``, and the
order of an epoch from one seeded by ``(seed, epoch)``. So the data of iteration ``n`` does not
depend on DataLoader workers, on how many items were drawn before, or on whether the run was
interrupted and resumed: :class:`EpochSampler` starts a resumed epoch at the batch it stopped at.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from hbdnet.data.synthetic import SyntheticScenes
from hbdnet.data.windows import WindowDataset, WindowSample


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class TrainingSet(Dataset):
    """Windows, synthetic windows, then ``negatives`` bridge-free windows; ``transform(sample,
    generator)`` augments each one.

    The negatives are drawn afresh every epoch (a seeded permutation per epoch, no repeats within
    one) from the empty windows that ``windows`` skipped, e.g. those of bridge-free images in the
    training folder: many background images reach the detector over a stage while each epoch
    costs only ``negatives`` more items.

    ``route``: pyramid level -> the level whose detector learns from it (``meta["detector_level"]``).
    """

    def __init__(
        self,
        windows: WindowDataset | None,
        synthetic: SyntheticScenes | None = None,
        transform: Callable[[WindowSample, torch.Generator], WindowSample] | None = None,
        seed: int = 0,
        route: Callable[[int], int] = lambda level: level,
        negatives: int = 0,
    ) -> None:
        if negatives < 0:
            raise ValueError(f"negatives must be >= 0, got {negatives}")
        spare = len(windows.spare) if windows is not None else 0
        self.negatives = min(negatives, spare)
        self.windows = windows
        self.synthetic = synthetic
        self.transform = transform
        self.seed = seed
        self.route = route
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_windows(self) -> int:
        return len(self.windows) if self.windows is not None else 0

    @property
    def num_synthetic(self) -> int:
        return len(self.synthetic) if self.synthetic is not None else 0

    def __len__(self) -> int:
        return self.num_windows + self.num_synthetic + self.negatives

    def __getitem__(self, index: int) -> WindowSample:
        g = item_generator(self.seed, self.epoch, index)
        if index < self.num_windows:
            sample = self.windows[index]  # type: ignore[index]
        elif index < self.num_windows + self.num_synthetic:
            sample = self.synthetic.sample(index - self.num_windows, g)  # type: ignore[union-attr]
        else:
            sample = self.windows.spare_empty(self._negative(index - self.num_windows - self.num_synthetic))  # type: ignore[union-attr]
        if self.transform is not None:
            sample = self.transform(sample, g)
        sample.meta["detector_level"] = self.route(sample.meta["level"])
        return sample


    def _negative(self, k: int) -> int:
        spare = len(self.windows.spare)  # type: ignore[union-attr]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + 7_919)
        return int(torch.randperm(spare, generator=g)[k])


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch, from item ``skip`` on (resuming inside an epoch)."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True) -> None:
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def order(self, epoch: int) -> Sequence[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order(self.epoch)[self.skip:])

    def __len__(self) -> int:
        return max(0, self.n - self.skip)
