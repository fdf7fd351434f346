"""A learned optimizer: the inner loop's update rule is a small network trained through it.

Meta-optimization in the spirit of Andrychowicz et al. 2016 ("Learning to learn by gradient
descent by gradient descent"), with a coordinate-wise MLP instead of an LSTM, applied in a
few-shot inner loop as in Ravi & Larochelle 2017 and Li & Malik 2017. Every coordinate of
every parameter tensor gets the update

    delta = -lr_t * (g + s * mlp(g / s, m / s, step / steps))

where ``g`` is its gradient, ``m`` a momentum of past gradients, ``s`` the root mean square of
the tensor's gradient (so the network sees scale-free inputs), and ``lr_t`` a learned rate per
tensor. The MLP's last layer starts at zero, so training starts from plain SGD and learns a
correction; the whole rule is trained by back-propagating the query loss through the unrolled
inner loop. Each step's metrics compare its query accuracy with plain SGD at ``inner_lr`` for
the same number of steps from the same weights (``sgd_accuracy``, ``learned_minus_sgd``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lab.algorithms.base import StepOutput, register
from lab.algorithms.inner import GradientLearner, InnerHparams, Params, Update, param_key, sgd
from lab.episodes import Episode
from lab.fields import number, positive


@dataclass(frozen=True)
class LearnedOptHparams(InnerHparams):
    update_hidden: int = positive(16)  # hidden units of the coordinate-wise update network
    momentum: float = number(0.9, low=0, high=1, high_open=True)  # decay of the momentum the network reads
    compare_sgd: bool = True  # also measure plain SGD on each training batch (costs a first-order inner loop)


class UpdateNet(nn.Module):
    """Per coordinate: (normalised gradient, normalised momentum, progress) -> a correction."""

    FEATURES = 3

    def __init__(self, hidden: int):
        super().__init__()
        self.inp = nn.Linear(self.FEATURES, hidden)
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, grad: torch.Tensor, momentum: torch.Tensor, progress: float) -> torch.Tensor:
        """``grad`` and ``momentum`` (any shape, normalised) -> a correction of the same shape."""
        feats = torch.stack([grad, momentum, torch.full_like(grad, progress)], -1)
        return self.out(torch.tanh(self.inp(feats))).squeeze(-1)


@register
class LearnedOptimizer(GradientLearner):
    name = "learned-opt"
    summary = "Learned optimizer: a small network turns each gradient into its update (meta-optimization)."
    Hparams = LearnedOptHparams
    scales_rate = False  # its network reads the gradient itself: a factor on it is not a factor on the step

    def __init__(self, hparams: LearnedOptHparams, n_way: int):
        super().__init__(hparams, n_way)
        self.update_net = UpdateNet(hparams.update_hidden)
        self.log_lrs = nn.ParameterDict(
            {param_key(k): nn.Parameter(torch.tensor(math.log(hparams.inner_lr))) for k in self.task_params(1)})

    def update_rule(self, steps: int) -> Update:
        beta = self.hparams.momentum

        def update(step: int, params: Params, grads: Params, state: dict) -> tuple[Params, dict]:
            new, state = dict(params), dict(state)
            for k, g in grads.items():
                m = beta * state[k] + (1 - beta) * g if k in state else (1 - beta) * g
                state[k] = m
                scale = torch.sqrt(g.pow(2).mean() + 1e-16)
                correction = self.update_net(g / scale, m / scale, step / max(steps - 1, 1))
                new[k] = params[k] - self.log_lrs[param_key(k)].exp() * (g + scale * correction)
            return new, state

        return update

    def outer_loss(self, batch: Episode) -> StepOutput:
        out = super().outer_loss(batch)
        if self.hparams.compare_sgd:
            sgd_acc = self.accuracy_with(sgd(self.hparams.inner_lr), batch)
            out.extras.update(sgd_accuracy=sgd_acc, learned_minus_sgd=round(out.accuracy.item() - sgd_acc, 6))
        return out

    def accuracy_with(self, update: Update, batch: Episode) -> float:
        """Query accuracy over ``batch`` when every task adapts by ``update`` for ``inner_steps`` steps."""
        correct = 0
        with torch.enable_grad():
            for i in range(batch.support_x.shape[0]):
                sx, sy, qx, qy = (t[i] for t in batch[:4])
                params = self.adapt_params(self.task_params(batch.n_way, detach=True), sx, sy,
                                           self.hparams.inner_steps, second_order=False, update=update)
                with torch.no_grad():
                    correct += (self.logits(params, qx).argmax(-1) == qy).sum().item()
        return correct / batch.query_y.numel()

    def internals(self) -> dict:
        """The learned rate of each parameter tensor, and the learned correction as a function of
        the normalised gradient (no momentum, first step), for plotting."""
        grid = torch.linspace(-3, 3, 25)
        with torch.no_grad():
            correction = self.update_net(grid, torch.zeros_like(grid), 0.0)
        return {
            "inner_lr": [{"parameter": k, "lr": self.log_lrs[param_key(k)].exp().item()} for k in self.task_params(1)],
            "update_curve": {"grad": grid.tolist(), "update": (grid + correction).tolist()},
        }
