"""Meta Networks (Munkhdalai & Yu, ICML 2017, "Meta Networks"), small and readable.

A *base learner* classifies with slow weights (learned across tasks) augmented by fast
weights (written for one task); a *meta learner* reads the base learner's loss gradients on
the support set and writes those fast weights. As in the paper:

1. Meta information: for each support example ``i`` the gradient of the base learner's
   loss with respect to its output layer, ``G_i = (softmax - onehot(y_i)) outer e_i``, with
   ``e_i`` the Conv4 embedding (slow weights).
2. Fast-weight generation: a meta network ``m`` maps each row of ``G_i`` to a row of
   example-level fast weights ``W*_i = m(G_i)``, stored in a memory keyed by ``r_i``, a
   learned projection of ``e_i``.
3. Retrieval and layer augmentation: a query with key ``r`` reads ``W* = sum_i a_i W*_i``,
   ``a = softmax(beta * cos(r, r_i))``, and scores ``(W + W*) e + b``: slow and fast weights
   combined in one layer.

Simplifications, to stay small: one fast-weight layer (the output layer; the paper also
augments hidden layers and gives the key network task-level fast weights), an MLP instead of
an LSTM for ``m``, and analytic output-layer gradients instead of autograd's. The slow output
weights are one row shared by every class (labels are arbitrary within a task, and any number
of classes can be asked for), so the task lives entirely in the fast weights. Trained end to
end across tasks by back-propagating the query loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lab.algorithms.base import MetaLearner, Predictor, StepOutput, input_grad, register
from lab.algorithms.execution import task_by_task
from lab.algorithms.inner import encode
from lab.episodes import Episode
from lab.fields import check_fields, positive
from lab.models import Conv4


@dataclass(frozen=True)
class MetaNetHparams:
    hidden: int = positive(64)  # Conv4 filters per layer
    meta_hidden: int = positive(128)  # hidden units of the meta network m
    key_dim: int = positive(64)  # size of the memory keys

    def __post_init__(self):
        check_fields(self)


@register
class MetaNet(MetaLearner):
    name = "metanet"
    summary = "Meta Networks: a meta network reads support-set loss gradients and writes fast weights."
    Hparams = MetaNetHparams

    def __init__(self, hparams: MetaNetHparams, n_way: int):
        super().__init__(hparams, n_way)
        self.encoder = Conv4(hidden=hparams.hidden)
        d = self.encoder.out_features()
        self.slow_weight = nn.Parameter(torch.zeros(1, d))  # one row, shared by every class
        self.slow_bias = nn.Parameter(torch.zeros(1))
        self.meta = nn.Sequential(nn.Linear(d, hparams.meta_hidden), nn.ReLU(), nn.Linear(hparams.meta_hidden, d))
        self.key = nn.Linear(d, hparams.key_dim)
        self.log_beta = nn.Parameter(torch.tensor(math.log(10.0)))  # sharpness of the memory read

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(..., n, 1, H, W)`` -> embeddings ``(..., n, d)``."""
        params = {f"encoder.{k}": v for k, v in self.encoder.named_parameters()}
        groups = self.encoder.blocks[0][1].num_groups
        return encode(params, x.reshape(-1, *x.shape[-3:]), groups).reshape(*x.shape[:-3], -1)

    def fast_weights(self, support_e: torch.Tensor, support_y: torch.Tensor, n_way: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The memory a support set writes: keys ``(..., s, key_dim)`` and fast weights ``(..., s, n_way, d)``."""
        logits = support_e @ self.slow_weight.expand(n_way, -1).T + self.slow_bias
        error = logits.softmax(-1) - F.one_hot(support_y, n_way).to(logits.dtype)  # dLoss/dlogits per example
        grads = error.unsqueeze(-1) * support_e.unsqueeze(-2)  # dLoss_i/dW, (..., s, n_way, d)
        return F.normalize(self.key(support_e), dim=-1), self.meta(grads)

    def query_logits(self, memory: tuple[torch.Tensor, torch.Tensor], query_e: torch.Tensor) -> torch.Tensor:
        """Query embeddings ``(..., q, d)`` -> logits ``(..., q, n_way)`` with slow plus retrieved fast weights."""
        keys, fast = memory
        attention = (self.log_beta.exp() * F.normalize(self.key(query_e), dim=-1) @ keys.transpose(-1, -2)).softmax(-1)
        weights = self.slow_weight + torch.einsum("...qs,...snd->...qnd", attention, fast)
        return torch.einsum("...qnd,...qd->...qn", weights, query_e) + self.slow_bias

    def strategy(self, device: torch.device) -> str:
        if self.execution.batched(device):
            return "batched"
        return "threads" if self.execution.task_workers(device) > 1 else "loop"

    def outer_loss(self, batch: Episode) -> StepOutput:
        if self.strategy(batch.support_x.device) == "batched":
            loss, correct = self.batch_loss(*batch[:4], batch.n_way)
            return StepOutput(loss, correct / batch.query_y.numel())
        return task_by_task(self, batch, lambda *task: self.batch_loss(*task, batch.n_way),
                            self.execution.task_workers(batch.support_x.device))

    def batch_loss(self, support_x, support_y, query_x, query_y, n_way: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean query loss and correct count of one task, or of tasks stacked on a leading dimension."""
        n_support = support_x.shape[-4]
        emb = self.embed(torch.cat([support_x, query_x], dim=-4))  # one pass for every image
        memory = self.fast_weights(emb[..., :n_support, :], support_y, n_way)
        logits = self.query_logits(memory, emb[..., n_support:, :])
        loss = F.cross_entropy(logits.flatten(0, -2).float(), query_y.flatten())
        return loss, (logits.argmax(-1) == query_y).sum()

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> Predictor:
        with torch.no_grad():
            memory = self.fast_weights(self.embed(support_x), support_y, n_way)

        def predict(x: torch.Tensor) -> torch.Tensor:
            with input_grad(x):
                return self.query_logits(memory, self.embed(x))

        return predict

    def internals(self) -> dict:
        return {"memory_read_sharpness": self.log_beta.exp().item()}
