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
    """Windows then synthetic windows; ``transform(sample, generator)`` augments each one.

    ``route``: pyramid level -> the level whose detector learns from it (``meta["detector_level"]``).
    """

    def __init__(
        self,
        windows: WindowDataset | None,
        synthetic: SyntheticScenes | None = None,
        transform: Callable[[WindowSample, torch.Generator], WindowSample] | None = None,
        seed: int = 0,
        route: Callable[[int], int] = lambda level: level,
    ) -> None:
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

    def __len__(self) -> int:
        return self.num_windows + (len(self.synthetic) if self.synthetic is not None else 0)

    def __getitem__(self, index: int) -> WindowSample:
        g = item_generator(self.seed, self.epoch, index)
        if index < self.num_windows:
            sample = self.windows[index]  # type: ignore[index]
        else:
            sample = self.synthetic.sample(index - self.num_windows, g)  # type: ignore[union-attr]
        if self.transform is not None:
            sample = self.transform(sample, g)
        sample.meta["detector_level"] = self.route(sample.meta["level"])
        return sample


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
