"""Model-Agnostic Meta-Learning and two cheaper relatives.

- ``maml``: Finn, Abbeel & Levine, ICML 2017. Learn an initialisation from which a few
  gradient steps on a task's support set fit its query set; the meta-gradient flows back
  through the inner steps (second order).
- ``fomaml``: the same, ignoring second derivatives (Finn et al. 2017, section 5.2).
- ``anil``: "Almost No Inner Loop" (Raghu, Raghu, Bengio & Vinyals, ICLR 2020): only the
  head adapts in the inner loop, the encoder is meta-learned and fixed within a task.

All three use the class-symmetric head of :mod:`lab.algorithms.inner`, so they adapt to any
number of classes at test time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lab.algorithms.base import Predictor, StepOutput, input_grad, register
from lab.algorithms.execution import task_by_task
from lab.algorithms.inner import HEAD, GradientLearner, InnerHparams, Params, Update, encode, inner_loop
from lab.episodes import Episode


@dataclass(frozen=True)
class MAMLHparams(InnerHparams):
    """MAML's hyper-parameters (second order by default)."""


@dataclass(frozen=True)
class FOMAMLHparams(InnerHparams):
    first_order: bool = True  # ignore second derivatives: the query gradient at the adapted weights is the meta-gradient


@dataclass(frozen=True)
class ANILHparams(InnerHparams):
    """ANIL's hyper-parameters (its batched execution stacks the tasks by hand rather than with vmap)."""


@register
class MAML(GradientLearner):
    name = "maml"
    summary = "MAML: learn an initialisation that a few gradient steps adapt to a new task (second order)."
    Hparams = MAMLHparams


@register
class FOMAML(GradientLearner):
    name = "fomaml"
    summary = "First-order MAML: MAML without second derivatives, cheaper per step."
    Hparams = FOMAMLHparams


@register
class ANIL(GradientLearner):
    """Only the head adapts, so the encoder runs once per image. Batched (on CUDA), support and
    query of every task go through it together and every task's head adapts at once (the
    tasks' losses are summed, so each head gets its own task's gradient); on a CPU task by task,
    the faster way there (``python -m lab bench algorithms`` times both)."""

    name = "anil"
    summary = "ANIL: MAML with only the classifier head adapted in the inner loop; a meta-learned encoder."
    Hparams = ANILHparams

    def adapted_names(self, params: Params) -> list[str]:
        return list(HEAD)

    def strategy(self, device: torch.device) -> str:
        """``batched`` (every task in one pass; vectorize "batched", or "auto" on CUDA), ``threads`` or ``loop``."""
        return "batched" if self._vectorized(device) else super().strategy(device)

    def _encode(self, *images: torch.Tensor) -> list[torch.Tensor]:
        """Each ``(..., n, 1, H, W)`` -> ``(..., n, d)``, all in one pass through the encoder."""
        flat = torch.cat([x.reshape(-1, *x.shape[-3:]) for x in images])
        feats = encode(self.task_params(1), flat, self.groups)
        out, start = [], 0
        for x in images:
            n = x.shape[:-3].numel()
            out.append(feats[start:start + n].reshape(*x.shape[:-3], -1))
            start += n
        return out

    def adapt_heads(self, support_f: torch.Tensor, support_y: torch.Tensor, n_way: int, steps: int,
                    second_order: bool, detach: bool = False, update: Update | None = None) -> Params:
        """Heads ``(tasks, n_way, d)``, ``(tasks, n_way)`` adapted to support features ``(tasks, n, d)``."""
        tasks = support_f.shape[0]
        params = {"head.weight": self.head_weight.expand(tasks, n_way, -1), "head.bias": self.head_bias.expand(tasks, n_way)}
        if detach:
            params = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
            support_f = support_f.detach()

        def support_loss(p: Params) -> torch.Tensor:  # a sum over tasks of each task's mean loss
            logits = head_logits(p, support_f)
            return F.cross_entropy(logits.flatten(0, 1), support_y.flatten(), reduction="sum") / support_y.shape[1]

        return inner_loop(support_loss, params, steps, update or self.update_rule(steps), list(HEAD), second_order,
                          symmetric_head=True)

    def outer_loss(self, batch: Episode) -> StepOutput:
        device = batch.support_x.device
        with self._autocast(device):
            if self.strategy(device) == "batched":
                loss, correct = self.batch_loss(*batch[:4], batch.n_way)
                return StepOutput(loss, correct / batch.query_y.numel())
            return task_by_task(self, batch, lambda *task: self.batch_loss(*(t[None] for t in task), batch.n_way),
                                self.task_workers(device))

    def batch_loss(self, support_x, support_y, query_x, query_y, n_way: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean query loss and correct count of tasks stacked on a leading dimension."""
        support_f, query_f = self._encode(support_x, query_x)
        heads = self.adapt_heads(support_f, support_y, n_way, self.hparams.inner_steps,
                                 second_order=not self.hparams.first_order)
        logits = head_logits(heads, query_f).float()
        return F.cross_entropy(logits.flatten(0, 1), query_y.flatten()), (logits.argmax(-1) == query_y).sum()

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> Predictor:
        with torch.no_grad():
            (support_f,) = self._encode(support_x[None])
        with torch.enable_grad():
            heads = self.adapt_heads(support_f, support_y[None], n_way, self.test_steps, second_order=False,
                                     detach=True, update=self.test_update(n_way, len(support_y)))
        heads = {k: v.detach() for k, v in heads.items()}

        def predict(x: torch.Tensor) -> torch.Tensor:
            with input_grad(x):
                return head_logits(heads, self._encode(x[None])[0])[0]

        return predict


def head_logits(params: Params, features: torch.Tensor) -> torch.Tensor:
    """Per-task heads ``(tasks, n_way, d)``, ``(tasks, n_way)`` on features ``(tasks, n, d)`` -> ``(tasks, n, n_way)``."""
    return torch.baddbmm(params["head.bias"].unsqueeze(1), features, params["head.weight"].transpose(1, 2))
