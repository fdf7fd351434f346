"""Run configuration: a frozen, validated dataclass stored as JSON beside every run."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field

from lab.algorithms import REGISTRY
from lab.data import DATASETS
from lab.device import DEVICE_CHOICES

LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a meta-training run. Unknown or invalid values raise ``ValueError``."""

    algorithm: str = "protonet"  # a name from lab.algorithms.REGISTRY
    dataset: str = "digits"  # digits needs no download, so it always works
    data_dir: str | None = None  # data root (for 'folder': the image folder); None: LAB_DATA_DIR or the default
    split_scheme: str | None = None  # the dataset's class split; None: its default (Omniglot: vinyals)
    n_way: int = 5  # classes per task at validation and test time
    k_shot: int = 1  # labelled examples per class in the support set
    n_query: int = 15  # examples per class to classify in each task
    train_way: int | None = None  # classes per training task (Prototypical Networks train with more); None: n_way
    meta_batch: int = 4  # tasks per outer step
    meta_lr: float = 1e-3  # Adam learning rate of the outer loop
    lr_schedule: str = "constant"  # constant, or cosine: the meta learning rate falls to zero as steps or minutes run out
    steps: int = 1000  # outer steps; with minutes, whichever ends first
    minutes: float | None = None  # wall-clock budget of training, validation included
    seed: int = 0  # seeds the task stream and the initial weights
    device: str = "auto"  # auto, cpu, cuda or mps
    val_every: int = 100  # outer steps between meta-validations
    val_episodes: int = 200  # episodes per meta-validation
    log_every: int = 10  # outer steps between metric lines
    hparams: dict = field(default_factory=dict)  # the algorithm's own hyper-parameters
    augment: bool = False  # small random affine changes and stroke thickness on training images (lab.augment)
    init_from: str | None = None  # a checkpoint (or zoo:NAME) whose weights and step count the run starts from

    def __post_init__(self):
        if self.algorithm not in REGISTRY:
            raise ValueError(f"algorithm: unknown {self.algorithm!r}; choose one of {', '.join(REGISTRY)}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset: unknown {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        if self.device not in DEVICE_CHOICES:
            raise ValueError(f"device: must be one of {', '.join(DEVICE_CHOICES)}, not {self.device!r}")
        for name in ("n_way", "k_shot", "meta_batch", "steps", "val_every", "val_episodes", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}: must be a positive whole number, not {getattr(self, name)!r}")
        if self.n_way < 2:
            raise ValueError(f"n_way: a task needs at least 2 classes, not {self.n_way}")
        if self.n_query < 1:
            raise ValueError(f"n_query: must be at least 1, not {self.n_query}")
        if self.train_way is not None and self.train_way < 2:
            raise ValueError(f"train_way: a task needs at least 2 classes, not {self.train_way}")
        if not self.meta_lr > 0:
            raise ValueError(f"meta_lr: must be positive, not {self.meta_lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule: must be one of {', '.join(LR_SCHEDULES)}, not {self.lr_schedule!r}")
        if not isinstance(self.augment, bool):
            raise ValueError(f"augment: must be true or false, not {self.augment!r}")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"minutes: must be positive, not {self.minutes}")
        # Filling in the algorithm's defaults validates its hyper-parameters too.
        object.__setattr__(self, "hparams", asdict(REGISTRY[self.algorithm].make_hparams(self.hparams)))

    @property
    def way_for_training(self) -> int:
        return self.train_way or self.n_way

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config: unknown field(s) {', '.join(unknown)}")
        return cls(**data)


# --------------------------------------------------------------------------- form fields


@dataclass(frozen=True)
class HparamField:
    """One hyper-parameter of an algorithm, described for a form: a page builds its widget from this."""

    name: str
    kind: str  # 'int', 'float', 'str', 'bool', or 'json' for anything else
    default: object
    choices: tuple = ()  # the accepted values when the field only takes a few
    optional: bool = False  # None is accepted
    help: str = ""


def field_comments(cls) -> dict[str, str]:
    """``name: type = default  # comment`` lines of a dataclass's source, as {name: comment}."""
    import inspect
    import re

    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    return {m[1]: m[2].strip() for m in re.finditer(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", source, re.M)}


def _probe_choices(cls, name: str) -> tuple:
    """The values a str field accepts, when its validation names them ('must be 'a' or 'b'').

    Each candidate quoted in the refusal of a made-up value is kept only if the dataclass accepts it.
    """
    import re

    probe = "\x00not-a-choice"
    try:
        cls(**{name: probe})
        return ()
    except (ValueError, TypeError) as err:
        candidates = re.findall(r"'([^'\x00]+)'", str(err))
    accepted = []
    for value in dict.fromkeys(candidates):
        try:
            cls(**{name: value})
            accepted.append(value)
        except (ValueError, TypeError):
            continue
    return tuple(accepted)


def hparam_fields(algorithm: str) -> list[HparamField]:
    """The hyper-parameters of a registered algorithm as form fields, read from its ``Hparams`` dataclass.

    Choices come from ``field(metadata={"choices": ...})``, a ``Literal`` annotation, or the values the
    field's validation names; help comes from ``metadata["help"]`` or the comment after the field.
    """
    import typing

    if algorithm not in REGISTRY:
        raise ValueError(f"algorithm: unknown {algorithm!r}; choose one of {', '.join(REGISTRY)}")
    cls = REGISTRY[algorithm].Hparams
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    defaults = cls()
    out = []
    for f in dataclasses.fields(cls):
        hint, optional = hints.get(f.name, type(None)), False
        args = typing.get_args(hint)
        if type(None) in args:
            optional = True
            rest = [a for a in args if a is not type(None)]
            hint = rest[0] if len(rest) == 1 else object
        choices = tuple(f.metadata.get("choices", ()))
        if typing.get_origin(hint) is typing.Literal:
            choices = choices or typing.get_args(hint)
            hint = type(choices[0])
        kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(hint, "json")
        if kind == "str" and not choices:
            choices = _probe_choices(cls, f.name)
        out.append(HparamField(f.name, kind, getattr(defaults, f.name), tuple(choices), optional,
                               f.metadata.get("help") or comments.get(f.name, "")))
    return out
