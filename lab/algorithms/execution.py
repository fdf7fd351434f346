"""How a batch of tasks is computed on a device: machine settings, not what is learned.

A run chooses them beside its device (``TrainConfig.vectorize`` and ``.precision``); every
algorithm reads them from its ``execution`` (:class:`Execution`), so a run gives the same model
whichever it picks (``tests/test_algorithms.py`` compares the batched, threaded and per-task
gradients). The per-task path lives here too: :func:`task_by_task` takes each task's
meta-gradient as soon as its loss is known, in CPU threads when asked (:func:`map_in_threads`),
and hands the sum back as one loss (:func:`surrogate_loss`). Batched paths are each algorithm's
own (``torch.func.vmap`` of its readable per-task function, or one stacked pass).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from lab.episodes import Episode
from lab.fields import check_fields, choice

VECTORIZE = ("auto", "batched", "threads", "loop")
"""batched: every task of a batch in one pass (``torch.func.vmap``, or one stacked pass where an
algorithm batches by hand); threads: tasks side by side in CPU threads; loop: one task after
another; auto: batched on CUDA, threads on a CPU with more than one intra-op thread."""
PRECISION = ("auto", "bf16", "fp32")
"""bf16: autocast to bfloat16; fp32: full precision; auto: bf16 on CUDA, fp32 elsewhere."""
OLD_NAMES = {"vmap": "batched"}  # what runs once called these settings


@dataclass
class StepOutput:
    """One outer step's loss (to back-propagate), its query accuracy, and named extras to log."""

    loss: torch.Tensor
    accuracy: torch.Tensor
    extras: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Execution:
    """A run's machine settings, resolved against the device a batch lives on."""

    vectorize: str = choice("auto", VECTORIZE)
    precision: str = choice("auto", PRECISION)

    def __post_init__(self):
        object.__setattr__(self, "vectorize", OLD_NAMES.get(self.vectorize, self.vectorize))
        check_fields(self)

    def batched(self, device: torch.device) -> bool:
        return self.vectorize == "batched" or (self.vectorize == "auto" and device.type == "cuda")

    def task_workers(self, device: torch.device) -> int:
        """CPU threads that share the tasks of a batch (1 off the CPU, or unless threads are chosen)."""
        if device.type != "cpu" or self.vectorize not in ("auto", "threads"):
            return 1
        return torch.get_num_threads()

    def autocast(self, device: torch.device):
        """The autocast context of this precision on ``device``."""
        use = self.precision == "bf16" or (self.precision == "auto" and device.type == "cuda")
        return torch.autocast(device.type, dtype=torch.bfloat16) if use else nullcontext()


def lift_machine_settings(hparams: dict | None) -> tuple[dict, dict]:
    """Split an algorithm's hyper-parameters as runs once stored them (``vectorize`` and
    ``precision`` among them) into (hyper-parameters, machine settings)."""
    hparams = dict(hparams or {})
    machine = {name: hparams.pop(name) for name in ("vectorize", "precision") if name in hparams}
    return hparams, machine


# --------------------------------------------------------------------------- tasks one by one, or side by side


def surrogate_loss(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None], value: torch.Tensor) -> torch.Tensor:
    """A scalar equal to ``value`` whose gradient with respect to ``params`` is ``grads``.

    Lets an algorithm compute its meta-gradient its own way (task by task, or Reptile's
    ``theta - theta_adapted``) and still hand the trainer one loss to ``backward()``.
    A non-finite gradient makes the value non-finite too, so the trainer notices it.
    """
    dot = sum((p * g.detach()).sum() for p, g in zip(params, grads) if g is not None)
    return value.detach() + (dot - dot.detach() if torch.is_tensor(dot) else 0.0)


def task_by_task(model: nn.Module, batch: Episode, task_loss: Callable, workers: int = 1) -> StepOutput:
    """Mean query loss and accuracy over ``batch``, one task at a time.

    ``task_loss(support_x, support_y, query_x, query_y) -> (loss, correct count)``. Each task's
    meta-gradient is taken as soon as its loss is known, so only one task's graph is alive at a
    time, and the sum is handed back through :func:`surrogate_loss`.

    ``workers > 1`` shares the tasks among that many threads, each computing its tasks with one
    intra-op thread: on a CPU whose operations are small (a 5-image support set), tasks side
    by side keep the cores busier than one task's operations split across them.
    """
    meta = [p for p in model.parameters() if p.requires_grad]
    tasks = batch.support_x.shape[0]
    grad_enabled = torch.is_grad_enabled()

    def run(indices: Sequence[int]) -> tuple[list, torch.Tensor | float, int | torch.Tensor]:
        total: list[torch.Tensor | None] = [None] * len(meta)
        loss_sum, correct = 0.0, 0
        for i in indices:
            loss, right = task_loss(*(t[i] for t in batch[:4]))
            if grad_enabled:
                grads = torch.autograd.grad(loss / tasks, meta, allow_unused=True)
                total = _add_grads(total, grads)
            loss_sum, correct = loss_sum + loss.detach(), correct + right
        return total, loss_sum, correct

    workers = max(1, min(workers, tasks))
    parts = map_in_threads(run, [range(w, tasks, workers) for w in range(workers)])
    total: list[torch.Tensor | None] = [None] * len(meta)
    for grads, _, _ in parts:
        total = _add_grads(total, grads)
    loss_sum, correct = sum(p[1] for p in parts), sum(p[2] for p in parts)
    loss = surrogate_loss(meta, total, loss_sum / tasks) if grad_enabled else loss_sum / tasks
    return StepOutput(loss, correct / batch.query_y.numel())


def map_in_threads(fn: Callable, shares: Sequence) -> list:
    """``[fn(share) for share in shares]``, each share in its own thread with one intra-op thread
    (in this thread when there is one share). Grad mode and CPU autocast, which are per thread,
    are carried over; PyTorch's thread count is restored afterwards."""
    if len(shares) == 1:
        return [fn(shares[0])]
    grad_enabled = torch.is_grad_enabled()
    autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None

    def in_thread(share):
        torch.set_num_threads(1)
        with torch.set_grad_enabled(grad_enabled), \
                (torch.autocast("cpu", dtype=autocast) if autocast else nullcontext()):
            return fn(share)

    threads = torch.get_num_threads()
    try:
        return list(_pool(len(shares)).map(in_thread, shares))
    finally:
        torch.set_num_threads(threads)


def _add_grads(total: list, grads: Sequence[torch.Tensor | None]) -> list:
    return [g if t is None else (t if g is None else t + g) for t, g in zip(total, grads)]


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="lab-task")
    return _POOLS[workers]
