"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

Adapt to each task with plain SGD on its support set, then move the initialisation toward
the adapted weights: ``theta <- theta + epsilon * mean_tasks(theta_adapted - theta)``.

How it fits the one training loop: :meth:`Reptile.outer_loss` returns a surrogate loss whose
gradient with respect to the weights is ``mean_tasks(theta - theta_adapted)`` (its value is
the query loss after adaptation, for the charts). With ``outer_optimizer="sgd"`` the meta
step is exactly the paper's interpolation with ``epsilon = meta_lr`` (use a meta rate near
1, e.g. ``--meta-lr 1.0``); the default ``"adam"`` feeds the same direction to Adam, as
learn2learn's and several public Reptile trainings do, which works with the lab's usual meta
rates. In meta-training the inner loop adapts on a task's support and query images together,
a new mini-batch of them at each step (the paper's "train shots" and "inner batch", see
:meth:`Reptile.task_step`); meta-validation and meta-testing adapt on the support set alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from lab.algorithms.base import StepOutput, register
from lab.algorithms.execution import map_in_threads, surrogate_loss
from lab.algorithms.inner import GradientLearner, InnerHparams
from lab.episodes import Episode
from lab.fields import positive


@dataclass(frozen=True)
class ReptileHparams(InnerHparams):
    first_order: bool = True  # Reptile never differentiates through the inner loop
    test_inner_steps: int | None = positive(10)  # steps when adapting to a new task (the paper takes 50)
    outer_optimizer: Literal["adam", "sgd"] = "adam"  # "sgd": theta += meta_lr * (theta_adapted - theta); "adam": Adam on that direction
    train_on_query: bool = True  # meta-training adapts on support and query images alike (the paper's "train shots")
    inner_batch: int | None = positive(10)  # images per inner step in meta-training, new ones each step (the paper's 10); None: all

    def __post_init__(self):
        super().__post_init__()
        if self.first_order is not True:
            raise ValueError("first_order: Reptile is first-order by construction; leave it true")


@register
class Reptile(GradientLearner):
    name = "reptile"
    summary = "Reptile: adapt by SGD, then move the initialisation toward the adapted weights (first order)."
    Hparams = ReptileHparams

    def configure_optimizer(self, meta_lr: float) -> torch.optim.Optimizer:
        if self.hparams.outer_optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=meta_lr)
        return super().configure_optimizer(meta_lr)

    def task_step(self, support_x, support_y, query_x, query_y, n_way: int, functional: bool = False):
        """One task: ``(theta - theta_adapted)`` per parameter, the query loss and correct count after adaptation.

        With ``train_on_query`` the inner loop adapts on the query images too, as the paper's
        Omniglot runs adapt on more examples per class ("train shots") than a test task offers:
        adapting on one image per class only teaches features that tell five images apart, not
        what stays the same within a class. Each step takes the next ``inner_batch`` of those
        images, so successive steps see different images, as in the paper (whose analysis finds
        Reptile's useful second-order term in exactly that difference); the zoo's reptile recipe
        (``python -m lab zoo verify reptile``) is where the choice is measured. The loss and accuracy
        reported are then on images it adapted on; meta-validation and meta-testing adapt on the
        support set alone.
        """
        x, y = train_shots(support_x, support_y, query_x, query_y, n_way) if self.hparams.train_on_query \
            else (support_x, support_y)
        start = self.task_params(n_way)
        leaves = {k: v.detach() if functional else v.detach().requires_grad_() for k, v in start.items()}
        adapted = self.adapt_params(leaves, x, y, self.hparams.inner_steps, second_order=False, functional=functional,
                                    batch=self.hparams.inner_batch)
        adapted = {k: v.detach() for k, v in adapted.items()}
        with torch.no_grad():
            logits = self.logits(adapted, query_x)
        deltas = {k: start[k].detach() - adapted[k] for k in start}
        return deltas, F.cross_entropy(logits.float(), query_y), (logits.argmax(-1) == query_y).sum()

    def outer_loss(self, batch: Episode) -> StepOutput:
        n_way, tasks = batch.n_way, batch.support_x.shape[0]
        device = batch.support_x.device
        with self._autocast(device):
            if self._vectorized(device):
                deltas, losses, correct = torch.func.vmap(
                    lambda *t: self.task_step(*t, n_way, functional=True), randomness="error")(*batch[:4])
                deltas = {k: d.mean(0) for k, d in deltas.items()}
                loss, correct = losses.mean(), correct.sum()
            else:
                def share(indices):
                    deltas, loss, correct = {}, 0.0, 0
                    for i in indices:
                        d, task_loss, right = self.task_step(*(t[i] for t in batch[:4]), n_way)
                        deltas = {k: deltas.get(k, 0) + v / tasks for k, v in d.items()}
                        loss, correct = loss + task_loss / tasks, correct + right
                    return deltas, loss, correct

                workers = max(1, min(self.task_workers(device), tasks))
                parts = map_in_threads(share, [range(w, tasks, workers) for w in range(workers)])
                deltas = {k: sum(p[0][k] for p in parts) for k in parts[0][0]}
                loss, correct = sum(p[1] for p in parts), sum(p[2] for p in parts)
        start = self.task_params(n_way)
        # The head's row is copied to every class, so its direction is the sum over the classes' rows.
        value = surrogate_loss([start[k] for k in deltas], [deltas[k] for k in deltas], loss.detach())
        return StepOutput(value, correct / batch.query_y.numel())


def train_shots(support_x, support_y, query_x, query_y, n_way: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A training task's labelled images, support and query together, shot by shot: each run
    of ``n_way`` images holds one image of every class (the sets come class by class, as
    :func:`lab.episodes.sample_episode` lays them out)."""
    def by_shot(support: torch.Tensor, query: torch.Tensor, item_dims: int) -> torch.Tensor:
        dim = support.dim() - item_dims - 1  # the images' dimension
        both = torch.cat([support.unflatten(dim, (n_way, -1)), query.unflatten(dim, (n_way, -1))], dim + 1)
        return both.transpose(dim, dim + 1).flatten(dim, dim + 1)

    return by_shot(support_x, query_x, 3), by_shot(support_y, query_y, 0)
