"""The algorithm protocol every meta-learner shares, and the registry that names them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import nn

from lab.algorithms.execution import Execution, StepOutput, lift_machine_settings  # noqa: F401  (StepOutput: part of the protocol)
from lab.episodes import Episode

Predictor = Callable[[torch.Tensor], torch.Tensor]
"""Images ``(n, 1, H, W)`` -> logits ``(n, n_way)`` for the task it was adapted to."""


@dataclass(frozen=True)
class NoHparams:
    """This algorithm has no hyper-parameters of its own."""


class MetaLearner(nn.Module):
    """Base of every algorithm.

    Subclasses set ``name``, ``summary`` and ``Hparams`` (a frozen dataclass whose fields
    have defaults and a validating ``__post_init__``), and implement ``outer_loss`` and ``adapt``.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    Hparams: ClassVar[type] = NoHparams

    def __init__(self, hparams, n_way: int):
        super().__init__()
        self.hparams = hparams
        self.n_way = n_way
        self.execution = Execution()  # how batches are computed; :func:`build` sets the run's

    def set_execution(self, execution: Execution) -> MetaLearner:
        """Compute batches with ``execution`` from now on (this model and the models it holds)."""
        for module in self.modules():
            if isinstance(module, MetaLearner):
                module.execution = execution
        return self

    @classmethod
    def make_hparams(cls, values: dict | None = None):
        """The algorithm's hyper-parameters from a dict, defaults filled in, unknown keys refused."""
        values, _ = lift_machine_settings(values)  # the run's settings now, wherever they were written
        known = {f.name for f in dataclasses.fields(cls.Hparams)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"hparams: {cls.name} has no hyper-parameter(s) {', '.join(unknown)}")
        return cls.Hparams(**values)

    def outer_loss(self, batch: Episode) -> StepOutput:
        """Meta-training loss over a batch of episodes (tensors with a leading task dimension)."""
        raise NotImplementedError

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> Predictor:
        """A predictor for the task whose labelled examples are ``support_x``, ``support_y``.

        The predictor builds no autograd graph (:func:`input_grad`) unless its input requires
        grad, as when an explanation (:mod:`lab.explain`) differentiates the logits with respect
        to the image."""
        raise NotImplementedError

    def internals(self) -> dict:
        """Named, JSON-ready views of what the algorithm has learned (for the Runs page)."""
        return {}

    def configure_optimizer(self, meta_lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=meta_lr)


def input_grad(x: torch.Tensor):
    """The grad mode of a predictor's call: off, unless the caller differentiates with respect to ``x``."""
    return torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad)


REGISTRY: dict[str, type[MetaLearner]] = {}


def register(cls: type[MetaLearner]) -> type[MetaLearner]:
    """Class decorator: make an algorithm selectable by its ``name``."""
    REGISTRY[cls.name] = cls
    return cls


def build(config) -> MetaLearner:
    """The algorithm a :class:`~lab.config.TrainConfig` names, freshly initialised from its seed."""
    cls = REGISTRY[config.algorithm]
    torch.manual_seed(config.seed)
    model = cls(cls.make_hparams(config.hparams), config.way_for_training)
    return model.set_execution(Execution(config.vectorize, config.precision))
