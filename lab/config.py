"""Run configuration: a frozen, validated dataclass stored as JSON beside every run."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field

from lab.algorithms import REGISTRY
from lab.algorithms.execution import OLD_NAMES, PRECISION, VECTORIZE, lift_machine_settings
from lab.data import DATASETS
from lab.device import DEVICE_CHOICES
from lab.fields import check_fields, choice, declared, field_comments, number, positive

LR_SCHEDULES = ("constant", "cosine")
STROKES = ("as-drawn", "normalised")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a meta-training run. Unknown or invalid values raise ``ValueError``."""

    algorithm: str = choice("protonet", REGISTRY)  # a name from lab.algorithms.REGISTRY
    dataset: str = choice("digits", DATASETS)  # digits needs no download, so it always works
    data_dir: str | None = None  # data root (for 'folder': the image folder); None: LAB_DATA_DIR or the default
    split_scheme: str | None = None  # the dataset's class split (Omniglot: vinyals, background, small1, small2); None: its default
    n_way: int = number(5, low=2)  # classes per task at validation and test time
    k_shot: int = positive(1)  # labelled examples per class in the support set
    n_query: int = positive(15)  # examples per class to classify in each task
    train_way: int | None = number(None, low=2)  # classes per training task (Prototypical Networks train with more); None: n_way
    meta_batch: int = positive(4)  # tasks per outer step
    meta_lr: float = positive(1e-3)  # Adam learning rate of the outer loop
    lr_schedule: str = choice("constant", LR_SCHEDULES)  # constant, or cosine: the meta learning rate falls to zero as steps or minutes run out
    steps: int = positive(1000)  # outer steps; with minutes, whichever ends first
    minutes: float | None = positive(None)  # wall-clock budget of training, validation included
    seed: int = number(0, low=0)  # seeds the task stream and the initial weights
    device: str = choice("auto", DEVICE_CHOICES)  # auto, cpu, cuda or mps
    vectorize: str = choice("auto", VECTORIZE)  # tasks of a batch: batched (in one pass), threads (side by side on a CPU) or loop; auto: batched on CUDA, threads on a CPU
    precision: str = choice("auto", PRECISION)  # bf16 autocast or fp32; auto: bf16 on CUDA, fp32 elsewhere
    val_every: int = positive(100)  # outer steps between meta-validations
    val_episodes: int = positive(200)  # episodes per meta-validation
    log_every: int = positive(10)  # outer steps between metric lines
    hparams: dict = field(default_factory=dict)  # the algorithm's own hyper-parameters
    turned_classes: bool = False  # every training class also at 90, 180 and 270 degrees, each turn a class of its own as in Omniglot's Vinyals split: four times the training classes
    within_group: float = number(0.0, low=0, high=1)  # share of training tasks whose classes all come from one group of the split (Omniglot: one alphabet), the harder tasks of Lake's protocol; the others mix the whole split
    augment: bool = False  # small random affine changes and stroke thickness on training images (lab.augment)
    strokes: str = choice("as-drawn", STROKES)  # normalised: every image the model meets, in training and in tests, has its strokes redrawn at MNIST's width first, as the drawing pad's are (lab.data.normalised_strokes)
    init_from: str | None = None  # a checkpoint (or zoo:NAME) whose weights and step count the run starts from

    def __post_init__(self):
        hparams, machine = lift_machine_settings(self.hparams)  # where runs once kept them
        for name, value in machine.items():
            if getattr(self, name) == "auto":
                object.__setattr__(self, name, OLD_NAMES.get(value, value))
        object.__setattr__(self, "hparams", hparams)
        check_fields(self)
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


def hparam_fields(algorithm: str) -> list[HparamField]:
    """The hyper-parameters of a registered algorithm as form fields, read from its ``Hparams`` dataclass:
    kinds and choices as declared (:mod:`lab.fields`), help from the comment after each field."""
    if algorithm not in REGISTRY:
        raise ValueError(f"algorithm: unknown {algorithm!r}; choose one of {', '.join(REGISTRY)}")
    cls = REGISTRY[algorithm].Hparams
    comments = field_comments(cls)
    defaults = cls()
    return [HparamField(d.name, d.kind, getattr(defaults, d.name), d.choices, d.optional, comments.get(d.name, ""))
            for d in declared(cls)]
