"""The experiment configuration: one YAML file per model, read into these dataclasses.

Defaults are the authors' values (method doc section 6); ``configs/*.yaml`` override what differs.

Schedules scale with the data set: a stage runs ``epochs`` passes over its windows, its learning
rate steps down at epochs ``lr_steps``, and the warm-up lasts ``warmup_fraction`` of the stage's
iterations, at most ``warmup_iters`` (the authors' 500, which is what a large set like GLH-Bridge
gets; 30 images get a warm-up of a few dozen iterations instead of one longer than the stage).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hbdnet.config_io import load_yaml
from hbdnet.data.augment import AugmentConfig
from hbdnet.models.hbdnet import HBDNetConfig

DETECTOR_PARTS = ("backbone", "neck", "rpn_head", "roi_head", "roi_classifier")
# Parts inside a detector's modules: the box head's last classification layer alone (re-scoring what
# the detector proposes, boxes untouched).
PART_PATHS = {"roi_classifier": "roi_head.bbox_head.fc_cls"}


@dataclass
class StageConfig:
    """One training stage: the detector of ``levels`` trained on those levels' windows.

    Level 0 trains the local detector; levels >= 1 the global detector(s). A stage starts from the
    weights the previous stage left (``init_from: previous``), so coarse levels are fine-tuned from
    the local detector as in the authors' "distillation" chain.
    """

    name: str
    levels: list[int]
    epochs: int = 24
    lr: float = 0.0025
    lr_steps: list[int] = field(default_factory=lambda: [16, 22])
    init_from: str = "previous"  # "previous" | "none"
    min_length: float = 0.0  # GT shorter than this (px at the level) are dropped; 15 for global levels
    # Windows of these levels are the stage's data (default: ``levels``); windows of a level the
    # stage does not train are fed to the detector of ``levels[0]`` (e.g. the global detector learning
    # from augmented full-resolution windows as well as from the coarse levels).
    data_levels: list[int] | None = None
    # Synthetic coarse-level windows per epoch: real bridge crops pasted at several scales into
    # mosaics of real backgrounds (hbdnet.data.synthetic), for the detector of ``levels[0]``.
    synthetic: int = 0
    synthetic_size: int | None = None  # their side in px (default: the model's window)
    # The parts of the stage's detectors it trains (``backbone``, ``neck``, ``rpn_head``, ``roi_head``,
    # or ``roi_classifier``: the box head's class scores only); default all. The others are frozen for the stage, and nothing is back-propagated into them.
    parts: list[str] | None = None

    def __post_init__(self) -> None:
        if not self.levels:
            raise ValueError(f"stage {self.name!r}: levels must not be empty")
        if self.epochs < 1:
            raise ValueError(f"stage {self.name!r}: epochs must be >= 1")
        if self.synthetic < 0:
            raise ValueError(f"stage {self.name!r}: synthetic must be >= 0")
        unknown = sorted(set(self.parts or []) - set(DETECTOR_PARTS))
        if unknown or self.parts == []:
            raise ValueError(f"stage {self.name!r}: parts must be some of {', '.join(DETECTOR_PARTS)}, "
                             f"got {self.parts}")


@dataclass
class OptimConfig:
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 35.0
    warmup_iters: int = 500  # at most this many warm-up iterations (the authors' 500)
    warmup_fraction: float = 0.05  # ... and at most this share of the stage's iterations
    warmup_ratio: float = 1 / 3


@dataclass
class DataConfig:
    classes: list[str] = field(default_factory=lambda: ["bridge"])
    iof_thr: float = 0.3
    flip: bool = True  # the authors' flips (horizontal / vertical / diagonal, 25 % each)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # more, for small sets (off by default)
    empty_fraction: float = 0.0  # share of windows without bridges kept as negatives
    # Windows without bridges drawn afresh each epoch from those not kept (e.g. bridge-free
    # images linked into the training folder): background the detector learns to leave alone.
    negatives_per_epoch: int = 0
    num_workers: int = 2


@dataclass
class TrainConfig:
    batch_size: int = 2
    amp: bool = True  # mixed precision, CUDA only
    seed: int = 0
    checkpoint_interval: int = 2  # epochs between kept epoch_<n>.pth snapshots
    checkpoint_every: int = 50  # iterations between resumable latest.pth saves (0: epoch ends only)
    log_interval: int = 10  # iterations


@dataclass
class ExperimentConfig:
    name: str
    model: HBDNetConfig = field(default_factory=HBDNetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig("local", [0])])
    # A trained model (a file, or a bundled name such as ``default``) whose weights the run starts
    # from instead of ImageNet's: fine-tuning. Its architecture must be ``model``'s.
    init_weights: str | None = None


def load_experiment(path: str | Path) -> ExperimentConfig:
    return load_yaml(ExperimentConfig, path)
