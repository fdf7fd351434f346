"""Meta-SGD (Li, Zhou, Chen & Li 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning").

Meta-optimization: besides MAML's initialisation, the outer loop learns the inner loop's
learning rate of every single parameter, ``theta' = theta - alpha * grad`` with ``alpha`` a
tensor the shape of ``theta``. A rate may become negative, so the rates learn a direction
as well as a size. ``internals()`` summarises the learned rates per parameter tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lab.algorithms.base import register
from lab.algorithms.inner import GradientLearner, InnerHparams, Params, Update, param_key


@dataclass(frozen=True)
class MetaSGDHparams(InnerHparams):
    """``inner_lr`` is where every learned rate starts."""


@register
class MetaSGD(GradientLearner):
    name = "metasgd"
    summary = "Meta-SGD: MAML that also learns a learning rate for every parameter (meta-optimization)."
    Hparams = MetaSGDHparams

    def __init__(self, hparams: MetaSGDHparams, n_way: int):
        super().__init__(hparams, n_way)
        shapes = {k: (v[:1] if k.startswith("head.") else v) for k, v in self.task_params(1).items()}
        self.inner_lrs = nn.ParameterDict(
            {param_key(k): nn.Parameter(torch.full_like(v.detach(), hparams.inner_lr)) for k, v in shapes.items()})

    def learned_rate(self, name: str) -> torch.Tensor:
        """The rates of parameter ``name`` (a head's single row broadcasts over the task's classes)."""
        return self.inner_lrs[param_key(name)]

    def update_rule(self, steps: int) -> Update:
        def update(step: int, params: Params, grads: Params, state: dict) -> tuple[Params, dict]:
            return {k: p - self.learned_rate(k) * grads[k] if k in grads else p for k, p in params.items()}, state

        return update

    def internals(self) -> dict:
        """Per parameter tensor: mean, mean absolute value, min and max of its learned rates."""
        rows = []
        for k in self.task_params(1):
            rate = self.learned_rate(k).detach().float()
            rows.append({"parameter": k, "mean": rate.mean().item(), "abs_mean": rate.abs().mean().item(),
                         "min": rate.min().item(), "max": rate.max().item(),
                         "negative_fraction": (rate < 0).float().mean().item()})
        return {"inner_lr": rows}
