"""The one inner loop of every gradient-based meta-learner, and the base they share.

Everything here is functional: a network is a dict of named tensors (``Params``) and a
function of it, so the same code adapts one task in a Python loop (``torch.autograd.grad``)
or many tasks at once under ``torch.func.vmap`` (``torch.func.grad``), and the meta-gradient
flows through the adapted weights back to the initial ones (second order) or not (first order).

The network is Conv4 and a *class-symmetric* head: one row ``(w, b)`` that every task copies
to each of its ``n_way`` classes before adapting (Ye & Chao 2022, "How to train your MAML to
excel in few-shot classification", the "Unicorn-MAML" head). So a model trained on 5-way
tasks adapts to any number of classes, and the class labels' order does not matter. It also
makes the first inner step cheaper, exactly: with every class scored alike the support loss is
``log n_way`` whatever the encoder computes, so the encoder's gradient at step 0 is zero and
only the head is differentiated there.

:class:`GradientLearner` is the base of MAML, first-order MAML, ANIL, Meta-SGD, the learned
optimizer and Reptile: each only chooses which parameters adapt and by which update rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from lab.adaptation import rate_scale
from lab.algorithms.base import MetaLearner, Predictor, StepOutput, input_grad
from lab.algorithms.execution import task_by_task
from lab.device import CPU_CHUNK
from lab.episodes import Episode
from lab.fields import check_fields, positive
from lab.models import Conv4, max_pool_2x2

Params = dict[str, torch.Tensor]
LossFn = Callable[[Params], torch.Tensor]
Update = Callable[[int, Params, Params, dict], tuple[Params, dict]]
"""An update rule ``(step, params, grads, state) -> (new params, new state)``.

``grads`` holds only the parameters that move at this step; a name missing from it, like
a zero gradient, must leave its parameter unchanged.
"""

HEAD = ("head.weight", "head.bias")


# --------------------------------------------------------------------------- the network, functionally


def conv4_features(params: Params, x: torch.Tensor, groups: int = 8) -> torch.Tensor:
    """``lab.models.Conv4`` as a function of its weights (``encoder.blocks.*``): ``(n, 1, H, W) -> (n, d)``.

    Pooling comes before the ReLU: max and ReLU commute, so the values and gradients are the
    module's, on four times fewer elements. The default memory layout is kept: PyTorch's
    channels-last group norm is accurate to about 1e-4 where the default layout keeps 1e-6.
    """
    for i in range(4):
        x = F.conv2d(x, params[f"encoder.blocks.{i}.0.weight"], params[f"encoder.blocks.{i}.0.bias"], padding=1)
        x = F.group_norm(x, groups, params[f"encoder.blocks.{i}.1.weight"], params[f"encoder.blocks.{i}.1.bias"])
        x = F.relu(max_pool_2x2(x, gather=True))
    return x.flatten(1)


def encode(params: Params, x: torch.Tensor, groups: int = 8) -> torch.Tensor:
    """Features of many images ``(n, 1, H, W) -> (n, d)``: in one call on an accelerator, in
    pieces of :data:`CPU_CHUNK` images on the CPU."""
    if x.device.type != "cpu" or len(x) <= CPU_CHUNK:
        return conv4_features(params, x, groups)
    return torch.cat([conv4_features(params, part, groups) for part in x.split(CPU_CHUNK)])


def linear_head(params: Params, features: torch.Tensor) -> torch.Tensor:
    """Features ``(n, d)`` -> logits ``(n, n_way)`` with the task's head ``(n_way, d)``, ``(n_way,)``."""
    return F.linear(features, params["head.weight"], params["head.bias"])


def param_key(name: str) -> str:
    """A parameter's name as a key of ``nn.ParameterDict`` (which refuses dots), for per-parameter state."""
    return name.replace(".", "__")


# --------------------------------------------------------------------------- update rules


def sgd(lr: float) -> Update:
    """Plain gradient descent at rate ``lr``."""

    def update(step: int, params: Params, grads: Params, state: dict) -> tuple[Params, dict]:
        return {k: p - lr * grads[k] if k in grads else p for k, p in params.items()}, state

    return update


# --------------------------------------------------------------------------- the inner loop


def mini_batches(x: torch.Tensor, y: torch.Tensor, size: int | None,
                 steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One mini-batch of ``size`` consecutive images ``(x, y)`` per inner step, going round the
    images (all of them at every step when ``size`` is None or not smaller)."""
    n = x.shape[-4]
    if size is None or size >= n:
        return [(x, y)] * steps

    def take(t: torch.Tensor, dim: int, start: int) -> torch.Tensor:
        if start + size <= n:
            return t.narrow(dim, start, size)
        return torch.cat([t.narrow(dim, start, n - start), t.narrow(dim, 0, start + size - n)], dim)

    starts = [(step * size) % n for step in range(steps)]
    return [(take(x, -4, s), take(y, -1, s)) for s in starts]


def gradients(loss_fn: LossFn, params: Params, names: Sequence[str], create_graph: bool, functional: bool,
              alias: Sequence[str] = ()) -> Params:
    """Gradients of ``loss_fn(params)`` with respect to ``params[names]``.

    ``functional`` uses ``torch.func.grad`` (required under vmap); otherwise ``torch.autograd.grad``,
    which needs ``params[names]`` to require grad. Without ``create_graph`` the gradients are
    constants to any outer differentiation (first order).

    ``alias`` names parameters that an earlier step left unchanged while computing others from
    them: they reach the loss along that path too, which belongs to the meta-gradient, not to
    this step's partial derivative, so they are differentiated through a fresh alias.
    """
    if functional:
        grads = torch.func.grad(lambda sub: loss_fn({**params, **sub}))({k: params[k] for k in names})
        return grads if create_graph else {k: g.detach() for k, g in grads.items()}
    params = {**params, **{k: params[k].view_as(params[k]) for k in alias}}
    loss = loss_fn(params)
    return dict(zip(names, torch.autograd.grad(loss, [params[k] for k in names], create_graph=create_graph)))


def inner_loop(loss_fn: LossFn | Sequence[LossFn], params: Params, steps: int, update: Update,
               adapted: Sequence[str] | None = None, second_order: bool = True, functional: bool = False,
               symmetric_head: bool = False, on_step: Callable[[int, Params], None] | None = None) -> Params:
    """``steps`` steps of ``update`` on the support loss ``loss_fn``, from ``params``; the adapted params.

    ``loss_fn`` may also be a sequence of losses, one per step (mini-batches of the support
    set, as Reptile takes them). Only the names in ``adapted`` (default: all) change.
    ``second_order`` keeps the graph of each gradient, so the result can be differentiated
    through the steps. ``symmetric_head`` promises
    that the head's rows (``head.weight``, ``head.bias``) are all equal at the start, so step 0
    differentiates the head alone (the other gradients are exactly zero then, see the module's
    docstring); the result is then the same, only cheaper. ``on_step(k, params)`` is called with
    the parameters after each step k = 1..steps (to watch a task being learned).
    """
    adapted = list(params) if adapted is None else list(adapted)
    state: dict = {}
    moved = set(params)  # names that are fresh tensors: the start, or the result of the last step
    for step in range(steps):
        names = [k for k in adapted if k in HEAD] if step == 0 and symmetric_head else adapted
        if not names:
            continue
        loss = loss_fn[step] if isinstance(loss_fn, Sequence) else loss_fn
        grads = gradients(loss, params, names, second_order, functional, alias=[k for k in names if k not in moved])
        params, state = update(step, params, grads, state)
        moved = set(grads)
        if on_step is not None:
            on_step(step + 1, params)
    return params


# --------------------------------------------------------------------------- the shared learner


@dataclass(frozen=True)
class InnerHparams:
    """Hyper-parameters every gradient-based learner shares."""

    inner_steps: int = positive(5)  # gradient steps on the support set per task during meta-training
    inner_lr: float = positive(0.1)  # step size of the inner loop (0.4, Finn et al.'s Omniglot rate, diverges with this GroupNorm Conv4)
    test_inner_steps: int | None = positive(None)  # steps when adapting to a new task (validation, test, drawing pad); None: inner_steps
    first_order: bool = False  # ignore second derivatives in the meta-gradient (cheaper)
    hidden: int = positive(64)  # Conv4 filters per layer

    def __post_init__(self):
        check_fields(self)


class GradientLearner(MetaLearner):
    """Conv4 with a class-symmetric head, adapted per task by :func:`inner_loop`.

    Subclasses override :meth:`adapted_names` (which parameters the inner loop moves),
    :meth:`update_rule` (how), and :meth:`meta_loss` for a different outer objective.
    """

    Hparams = InnerHparams
    scales_rate: bool = True  # the update is linear in the gradient, so a fitted factor scales its rate

    def __init__(self, hparams: InnerHparams, n_way: int):
        super().__init__(hparams, n_way)
        # Factors on the rate of test-time adaptation per task shape ("10w5s": 0.3), fitted on
        # meta-validation by :mod:`lab.adaptation`; empty: the rate meta-training used, for every shape.
        self.rate_scales: dict[str, float] = {}
        self.encoder = Conv4(hidden=hparams.hidden)
        self.groups = self.encoder.blocks[0][1].num_groups
        # One row for every class (zero: every class starts equal, the head learns its start).
        self.head_weight = nn.Parameter(torch.zeros(1, self.encoder.out_features()))
        self.head_bias = nn.Parameter(torch.zeros(1))

    # ----------------------------------------------------------------- pieces

    @property
    def test_steps(self) -> int:
        """Inner steps when adapting to a new task (default: training's; each recipe of the zoo
        names its own)."""
        return self.hparams.test_inner_steps or self.hparams.inner_steps

    def test_update(self, n_way: int, n_support: int, update: Update | None = None) -> Update:
        """The rule that adapts to a new task of ``n_way`` classes and ``n_support`` labelled images: ``update``
        when given, else the algorithm's own with its gradients scaled by the fitted factor of the
        nearest task shape (:func:`lab.adaptation.rate_scale`)."""
        if update is not None:
            return update
        rule = self.update_rule(self.test_steps)
        scale = rate_scale(self.rate_scales, n_way, max(1, n_support // max(1, n_way))) if self.scales_rate else 1.0
        if scale == 1.0:
            return rule

        def scaled(step: int, params: Params, grads: Params, state: dict) -> tuple[Params, dict]:
            return rule(step, params, {k: scale * g for k, g in grads.items()}, state)

        return scaled

    def task_params(self, n_way: int, detach: bool = False) -> Params:
        """The parameters a task starts from: the encoder's, and the head row copied ``n_way`` times."""
        params = {f"encoder.{k}": v for k, v in self.encoder.named_parameters()}
        params["head.weight"] = self.head_weight.expand(n_way, -1)
        params["head.bias"] = self.head_bias.expand(n_way)
        if detach:
            params = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        return params

    def logits(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """Images ``(n, 1, H, W)`` -> logits ``(n, n_way)`` under the task's ``params``."""
        return linear_head(params, conv4_features(params, x, self.groups))

    def support_loss(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The cross-entropy of ``params`` on labelled images ``x``, ``y`` (what the inner loop lowers)."""
        return F.cross_entropy(self.logits(params, x), y)

    def adapted_names(self, params: Params) -> list[str]:
        return list(params)

    def update_rule(self, steps: int) -> Update:
        return sgd(self.hparams.inner_lr)

    def _vectorized(self, device: torch.device) -> bool:
        return self.execution.batched(device)

    def strategy(self, device: torch.device) -> str:
        """How a batch of tasks is computed on ``device``: ``vmap``, ``threads`` or ``loop``."""
        if self._vectorized(device):
            return "vmap"
        return "threads" if self.task_workers(device) > 1 else "loop"

    def task_workers(self, device: torch.device) -> int:
        return self.execution.task_workers(device)

    def _autocast(self, device: torch.device):
        return self.execution.autocast(device)

    def adapt_params(self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor, steps: int,
                     second_order: bool, functional: bool = False, update: Update | None = None,
                     batch: int | None = None, on_step: Callable[[int, Params], None] | None = None) -> Params:
        """The task's parameters after ``steps`` inner steps on its support set (by ``update``,
        default the algorithm's own rule), each step on the next ``batch`` images (default: all);
        ``on_step(k, params)`` after each step."""
        losses = [partial(self.support_loss, x=x, y=y) for x, y in mini_batches(support_x, support_y, batch, steps)]
        return inner_loop(losses, params, steps,
                          update or self.update_rule(steps), self.adapted_names(params), second_order, functional,
                          symmetric_head=True, on_step=on_step)

    # ----------------------------------------------------------------- meta-training

    def task_loss(self, support_x, support_y, query_x, query_y, n_way: int,
                  functional: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """One task's query loss after adaptation (differentiable to the meta-parameters), and its correct count."""
        adapted = self.adapt_params(self.task_params(n_way), support_x, support_y, self.hparams.inner_steps,
                                    second_order=not self.hparams.first_order, functional=functional)
        logits = self.logits(adapted, query_x)
        return F.cross_entropy(logits.float(), query_y), (logits.argmax(-1) == query_y).sum()

    def outer_loss(self, batch: Episode) -> StepOutput:
        device, n_way = batch.support_x.device, batch.n_way
        with self._autocast(device):
            if self._vectorized(device):
                return self._outer_vmap(batch, n_way)
            return self._outer_loop(batch, n_way)

    def _outer_vmap(self, batch: Episode, n_way: int) -> StepOutput:
        def one(sx, sy, qx, qy):
            return self.task_loss(sx, sy, qx, qy, n_way, functional=True)

        losses, correct = torch.func.vmap(one, randomness="error")(*batch[:4])
        return StepOutput(losses.mean(), correct.sum() / batch.query_y.numel())

    def _outer_loop(self, batch: Episode, n_way: int) -> StepOutput:
        return task_by_task(self, batch, lambda sx, sy, qx, qy: self.task_loss(sx, sy, qx, qy, n_way),
                            self.task_workers(batch.support_x.device))

    # ----------------------------------------------------------------- adaptation to a new task

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int,
              update: Update | None = None) -> Predictor:
        """Run the inner loop (``test_inner_steps`` steps, first order, by ``update``: default the
        algorithm's own rule) on the support set, even under no_grad."""
        with torch.enable_grad():
            params = self.adapt_params(self.task_params(n_way, detach=True), support_x, support_y,
                                       self.test_steps, second_order=False,
                                       update=self.test_update(n_way, len(support_y), update))
        params = {k: v.detach() for k, v in params.items()}

        def predict(x: torch.Tensor) -> torch.Tensor:
            with input_grad(x):
                return self.logits(params, x)

        return predict

