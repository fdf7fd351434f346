"""How a batch of tasks is computed on a device: machine settings, not what is learned.

A run chooses them beside its device (``TrainConfig.vectorize`` and ``.precision``); every
algorithm reads them from its ``execution``, so a run gives the same model whichever it picks
(``tests/test_algorithms.py`` compares the batched, threaded and per-task gradients).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from lab.fields import check_fields, choice

VECTORIZE = ("auto", "batched", "threads", "loop")
"""batched: every task of a batch in one pass (``torch.func.vmap``, or one stacked pass where an
algorithm batches by hand); threads: tasks side by side in CPU threads; loop: one task after
another; auto: batched on CUDA, threads on a CPU with more than one intra-op thread."""
PRECISION = ("auto", "bf16", "fp32")
"""bf16: autocast to bfloat16; fp32: full precision; auto: bf16 on CUDA, fp32 elsewhere."""
OLD_NAMES = {"vmap": "batched"}  # what runs once called these settings


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
