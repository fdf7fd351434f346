"""The plain per-task loop the lab's meta-learners are measured against (``python -m lab bench algorithms``).

It is the way the reference implementations (learn2learn's ``MAML``/``MetaSGD``, the MAML
repositories) do one meta-training step: one task at a time, the network called as a module
(``torch.func.functional_call`` on ``lab.models.Conv4``), every adapted parameter
differentiated at every inner step with ``torch.autograd.grad(create_graph=second_order)``,
and ``backward()`` once per task. The module pools with PyTorch's ``max_pool2d`` where
gradients flow; the lab's functional network pools by ``gather`` (``lab.models.max_pool_2x2``).
It computes the same meta-gradient as the lab's learners (same parameters, same update
rule); only the way it computes it differs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from lab.algorithms.base import MetaLearner
from lab.algorithms.inner import HEAD, GradientLearner, Params, mini_batches
from lab.algorithms.maml import ANIL
from lab.algorithms.reptile import Reptile, train_shots
from lab.episodes import Episode


def _logits(model: GradientLearner, params: Params, x: torch.Tensor) -> torch.Tensor:
    encoder = {k.removeprefix("encoder."): v for k, v in params.items() if k.startswith("encoder.")}
    return F.linear(functional_call(model.encoder, encoder, (x,)), params["head.weight"], params["head.bias"])


def _adapt(model: GradientLearner, params: Params, names: list[str], loss_fn, steps: int, second_order: bool) -> Params:
    """``steps`` steps on ``loss_fn``, or on ``loss_fn[step]`` when it is a list (one mini-batch a step)."""
    update, state = model.update_rule(steps), {}
    for step in range(steps):
        loss = loss_fn[step](params) if isinstance(loss_fn, list) else loss_fn(params)
        grads = torch.autograd.grad(loss, [params[k] for k in names], create_graph=second_order)
        params, state = update(step, params, dict(zip(names, grads)), state)
    return params


def reference_backward(model: MetaLearner, batch: Episode) -> float:
    """Accumulate ``model``'s meta-gradient over ``batch`` into ``.grad``, task by task; the mean query loss."""
    tasks, n_way, total = batch.support_x.shape[0], batch.n_way, 0.0
    for i in range(tasks):
        task = batch.task(i)
        if not isinstance(model, GradientLearner):  # no inner loop: the same step, one task at a time
            loss = model.outer_loss(Episode(*(t[None] for t in task))).loss
        elif isinstance(model, Reptile):
            loss = _reptile_task(model, task, n_way, tasks)
        else:
            loss = _maml_task(model, task, n_way, second_order=not model.hparams.first_order,
                              head_only=isinstance(model, ANIL))
        if loss.requires_grad:
            (loss / tasks).backward()
        total += loss.item() / tasks
    return total


def _maml_task(model: GradientLearner, task: Episode, n_way: int, second_order: bool, head_only: bool) -> torch.Tensor:
    params = model.task_params(n_way)
    steps = model.hparams.inner_steps
    if head_only:  # learn2learn's ANIL: the task's images through the encoder once, then the head adapts on features
        feats = model.encoder(torch.cat([task.support_x, task.query_x]))
        support_f, query_f = feats[: len(task.support_x)], feats[len(task.support_x):]

        def head_loss(p: Params) -> torch.Tensor:
            return F.cross_entropy(F.linear(support_f, p["head.weight"], p["head.bias"]), task.support_y)

        head = _adapt(model, {k: params[k] for k in HEAD}, list(HEAD), head_loss, steps, second_order)
        return F.cross_entropy(F.linear(query_f, head["head.weight"], head["head.bias"]), task.query_y)
    adapted = _adapt(model, params, list(params), lambda p: F.cross_entropy(_logits(model, p, task.support_x), task.support_y),
                     steps, second_order)
    return F.cross_entropy(_logits(model, adapted, task.query_x), task.query_y)


def _reptile_task(model: GradientLearner, task: Episode, n_way: int, tasks: int) -> torch.Tensor:
    start = model.task_params(n_way)
    params = {k: v.detach().requires_grad_() for k, v in start.items()}
    steps = model.hparams.inner_steps
    x, y = train_shots(*task[:4], n_way) if model.hparams.train_on_query else (task.support_x, task.support_y)
    losses = [lambda p, bx=bx, by=by: F.cross_entropy(_logits(model, p, bx), by)
              for bx, by in mini_batches(x, y, model.hparams.inner_batch, steps)]
    adapted = _adapt(model, params, list(params), losses, steps, second_order=False)
    with torch.no_grad():
        loss = F.cross_entropy(_logits(model, adapted, task.query_x), task.query_y)
    # The meta-gradient is theta - theta_adapted: accumulate it directly.
    for k, p in start.items():
        torch.autograd.backward(p, (p.detach() - adapted[k].detach()) / tasks)
    return loss
