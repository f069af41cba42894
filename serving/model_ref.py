"""The model a run names: ``--model NAME|PATH`` resolved to a checkpoint, and what outputs and
manifests say of it (``ModelRef``). The CLI, the batch runner and the service all take it from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from serving.engine.detectors import DetectorSpec, ModelSpec

DEFAULT_MODEL = "default"
MODEL_SUFFIXES = (".pth", ".pt", ".safetensors")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ModelError(Exception):
    """The model named cannot be used (missing file, unknown name, not an hbdnet checkpoint); one line."""


@dataclass(frozen=True)
class ModelGsd:
    """The ground sample distances (metres a pixel) a model sees bridges at, as its file records them
    (``meta["gsd_m"]``: ``{"min", "best", "max"}``): pyramid levels finer than ``min`` or coarser than
    ``max`` are not run; a scene's finest level is resampled into ``min`` to ``best`` (``best``: the
    coarsest finest level at which the model still finds its small bridges). ``max_upsample``: how far
    a coarse scene is upsampled at most (``serving.resolution``)."""

    min: float
    best: float
    max: float
    max_upsample: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.min <= self.best <= self.max or self.max_upsample < 1:
            raise ValueError(f"a model's GSD range must be 0 < min <= best <= max and max_upsample >= 1, got {self}")

    @classmethod
    def from_meta(cls, meta: dict) -> ModelGsd | None:
        """The range a model file's meta records (None: it records none, or not a valid one)."""
        value = meta.get("gsd_m")
        if not isinstance(value, dict):
            return None
        try:
            return cls(**{k: float(v) for k, v in value.items() if k in ("min", "best", "max", "max_upsample")})
        except (TypeError, ValueError):
            return None


@dataclass(frozen=True)
class ModelRef:
    """The detector to run and how outputs and the manifest name it.

    ``sha256`` identifies the weights (of the checkpoint file for a ``ModelSpec``); ``window`` and
    ``overlap`` are the pyramid the model was built for; ``class_names`` index its labels;
    ``score_thr`` is the operating point stored with the model (None: none was chosen); ``gsd`` the
    ground sample distances it was made for (None: unknown, scenes run at their own resolution).
    """

    name: str
    sha256: str
    spec: DetectorSpec
    class_names: tuple[str, ...] = ("bridge",)
    window: int = 1024
    overlap: int = 200
    score_thr: float | None = None
    gsd: ModelGsd | None = None

    def score_threshold(self, given: float | None) -> float:
        """The threshold a run uses: ``given``, else the model's stored operating point, else 0."""
        if given is not None:
            return given
        return self.score_thr if self.score_thr is not None else 0.0

    @property
    def label(self) -> str:
        """What the ``model`` attribute of every output feature says."""
        return f"{self.name}@{self.sha256[:12]}"


def model_ref(spec: DetectorSpec, name: str | None = None, *, window: int | None = None,
              overlap: int | None = None) -> ModelRef:
    """Describe ``spec``: for a model file, its hash, classes, pyramid and operating point; for other
    detectors (test doubles, ``NoopSpec``), their fingerprint. ``window`` and ``overlap`` override the
    pyramid (a detector that is not a model has none of its own).

    Raises ``hbdnet.checkpoint.CheckpointError`` for a file that is not an hbdnet checkpoint (checked
    here, in this process, so that a bad file is one clear error before any worker starts).
    """
    if isinstance(spec, ModelSpec):
        from hbdnet.checkpoint import read_checkpoint

        ckpt = read_checkpoint(spec.path)
        config = ckpt.get("config") or {}
        meta = ckpt.get("meta") or {}
        num_classes = int((config.get("local") or {}).get("num_classes", 1))
        classes = meta.get("classes")
        if not (isinstance(classes, (list, tuple)) and len(classes) == num_classes):
            classes = ["bridge"] if num_classes == 1 else [f"class_{i}" for i in range(num_classes)]
        return ModelRef(
            name=name or spec.name,
            sha256=spec.fingerprint(),
            spec=spec,
            class_names=tuple(str(c) for c in classes),
            window=window or int(config.get("window", 1024)),
            overlap=int(config.get("overlap", 200)) if overlap is None else overlap,
            score_thr=float(meta["score_thr"]) if meta.get("score_thr") is not None else None,
            gsd=ModelGsd.from_meta(meta),
        )
    return ModelRef(name or spec.name, spec.fingerprint(), spec, window=window or 1024,
                    overlap=200 if overlap is None else overlap)


def _looks_like_path(arg: str) -> bool:
    return ("/" in arg or "\\" in arg or arg.lower().endswith(MODEL_SUFFIXES)
            or not _NAME.fullmatch(arg) or Path(arg).exists())


def resolve_model(arg: str | None, device: str = "auto", precision: str = "auto", runtime: str = "auto") -> ModelRef:
    """The ``ModelRef`` that ``--model ARG`` names (None: the bundled ``default``), checked to be an
    hbdnet checkpoint, to run on ``device`` in ``precision`` (``hbdnet.precision``) with ``runtime``
    (``hbdnet.models.onnx_trunk``).

    Raises ``ModelError`` for a missing file, an unknown NAME, no bundled default, or a file that is
    not an hbdnet checkpoint.
    """
    from hbdnet.checkpoint import CheckpointError, bundled_model_path, bundled_models

    bundled = bundled_models()
    if arg is None:
        if DEFAULT_MODEL not in bundled:
            raise ModelError("this hbdnet ships no bundled default model yet: pass --model PATH to an hbdnet "
                             "checkpoint (`hbdnet convert` makes one from the authors' weights)")
        name, path = DEFAULT_MODEL, bundled_model_path(DEFAULT_MODEL)
    elif _looks_like_path(arg):
        path = Path(arg).expanduser()
        if not path.is_file():
            raise ModelError(f"model file not found: {arg}")
        name = path.stem
    else:
        if arg not in bundled:
            known = ", ".join(bundled) or "none yet"
            raise ModelError(f"unknown model name {arg!r} (bundled models: {known}); "
                             "pass --model PATH to use an hbdnet checkpoint")
        name, path = arg, bundled_model_path(arg)
    try:
        return model_ref(ModelSpec(str(path), device=device, precision=precision, runtime=runtime), name=name)
    except CheckpointError as exc:
        raise ModelError(checkpoint_error_line(exc)) from exc


def checkpoint_error_line(exc: BaseException) -> str:
    """A ``CheckpointError`` as one line: torch's many-line reasons (weights-only unpickling, a
    corrupt zip) cut to what a user can act on."""
    text = _ANSI.sub("", str(exc)).strip()
    cause = exc.__cause__
    if cause is None or ("\n" not in text and len(text) <= 200):
        return text.splitlines()[0] if text else type(exc).__name__
    detail = _ANSI.sub("", str(cause))
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", detail)
    if unsafe:
        reason = f"it holds a Python object ({unsafe.group(1)}) that is not loaded, for safety"
    else:
        first = detail.strip().splitlines()[0] if detail.strip() else ""
        reason = first.split(". ", 1)[0].rstrip(".") or type(cause).__name__
    head = text.split(" (", 1)[0] if " is not a readable PyTorch checkpoint" in text else text.splitlines()[0]
    return f"{head} ({type(cause).__name__}: {reason})"
