"""Meta-training across processes with ``torch.distributed`` (launched by ``torchrun``).

Every process draws the same full meta-batch from the same seeded task stream and keeps its
own slice of tasks, so the tasks of one outer step are exactly those a single process would
train on. After the backward pass the meta-gradients are averaged across processes (Gloo on
CPUs, NCCL on GPUs); with equal slices this equals the single-process gradient of the whole
meta-batch. Only rank 0 validates and writes metrics, status and checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lab.episodes import Episode


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_from_env(device_preference: str = "auto") -> World:
    """Join the process group that ``torchrun`` describes in the environment; a lone process is world 1."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_preference in ("auto", "cuda")
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return World(rank, size, local_rank)


def current_world() -> World:
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shard(batch: Episode, world: World) -> Episode:
    """This process's slice of a batch of episodes (leading task dimension)."""
    if not world.distributed:
        return batch
    tasks = batch.support_x.shape[0]
    if tasks % world.size:
        raise ValueError(f"meta_batch {tasks} must be divisible by the number of processes {world.size}")
    per = tasks // world.size
    return Episode(*(t[world.rank * per : (world.rank + 1) * per] for t in batch))


def average_gradients(parameters, world: World) -> None:
    """Replace each parameter's gradient with its mean across processes (one flat all-reduce)."""
    if not world.distributed:
        return
    params = [p for p in parameters if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world.size
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(g).clone()
        offset += n


def mean_across(values: list[float], world: World, device) -> list[float]:
    """The mean of each value across processes."""
    if not world.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / world.size).tolist()


def from_main(flag: bool, world: World, device) -> bool:
    """Rank 0's value of ``flag`` on every process (so all stop at the same step)."""
    if not world.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def broadcast_object(obj, world: World):
    """Rank 0's ``obj`` (any picklable value) on every process."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(clean: bool = True) -> None:
    """Leave the process group. After a clean finish every process first waits for the others,
    so that none closes its connections while a peer still reads from them (Gloo aborts a
    process whose peer hangs up mid-read); after an error it leaves at once."""
    if dist.is_available() and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()
