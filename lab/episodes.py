"""N-way K-shot episodes: a named record and a seeded sampler.

Sampling is a pure function of (class pool, task shape, numpy Generator): the same seed gives
the same episode on every machine. Labels are 0..n_way-1 in the order the classes were drawn.
Batches of episodes are stacked along a leading task dimension so it can be vectorised.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from lab.data import ClassPool


class Episode(NamedTuple):
    """One few-shot task, or a batch of tasks when every tensor has a leading task dimension.

    support_x: (n_way * k_shot, 1, H, W) float in [0, 1], ordered class by class
    support_y: (n_way * k_shot,) int64 in 0..n_way-1
    query_x:   (n_way * n_query, 1, H, W)
    query_y:   (n_way * n_query,)
    classes:   (n_way,) indices of the drawn classes in their pool
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: torch.Tensor

    @property
    def n_way(self) -> int:
        return self.classes.shape[-1]

    def to(self, device: torch.device | str) -> Episode:
        return Episode(*(t.to(device, non_blocking=True) for t in self))

    def task(self, i: int) -> Episode:
        """Task ``i`` of a batch."""
        return Episode(*(t[i] for t in self))


def check_request(pool: ClassPool, n_way: int, k_shot: int, n_query: int) -> None:
    """Raise ``ValueError`` naming the numbers when ``pool`` cannot supply such episodes."""
    if n_way < 2:
        raise ValueError(f"n_way must be at least 2, not {n_way}")
    if k_shot < 1:
        raise ValueError(f"k_shot must be at least 1, not {k_shot}")
    if n_query < 0:
        raise ValueError(f"n_query must not be negative, not {n_query}")
    if n_way > len(pool):
        raise ValueError(f"{n_way}-way episodes need {n_way} classes, but {pool.name} has only {len(pool)}")
    if k_shot + n_query > pool.min_class_size:
        raise ValueError(
            f"k_shot + n_query = {k_shot} + {n_query} = {k_shot + n_query} images per class, "
            f"but the smallest class of {pool.name} has only {pool.min_class_size}"
        )


def can_supply(pool: ClassPool, n_way: int, k_shot: int, n_query: int) -> bool:
    """Whether ``pool`` can supply such episodes (:func:`check_request` without the reason)."""
    try:
        check_request(pool, n_way, k_shot, n_query)
    except ValueError:
        return False
    return True


def sample_episode(pool: ClassPool, n_way: int, k_shot: int, n_query: int, rng: np.random.Generator,
                   among: np.ndarray | None = None) -> Episode:
    """Draw one episode from ``pool`` with ``rng``; images are float32 in [0, 1] on the CPU. ``among``: the
    class indices to draw from (all of the pool's by default)."""
    check_request(pool, n_way, k_shot, n_query)
    classes = rng.choice(len(pool) if among is None else among, size=n_way, replace=False)
    shots = []
    for c in classes:
        which = rng.choice(len(pool.members[c]), size=k_shot + n_query, replace=False)
        shots.append(pool.class_images(int(c), which))
    x = torch.stack(shots).float().div_(255.0)  # (n_way, k + q, 1, H, W)
    labels = torch.arange(n_way).unsqueeze(1)
    flat = lambda t: t.reshape(-1, *t.shape[2:])  # noqa: E731
    return Episode(
        flat(x[:, :k_shot]),
        labels.expand(n_way, k_shot).reshape(-1),
        flat(x[:, k_shot:]),
        labels.expand(n_way, n_query).reshape(-1),
        torch.from_numpy(classes.astype(np.int64)),
    )


def sample_batch(
    pool: ClassPool,
    n_way: int,
    k_shot: int,
    n_query: int,
    meta_batch: int,
    rng: np.random.Generator,
    device: torch.device | str = "cpu",
    within_group: float = 0.0,
) -> Episode:
    """``meta_batch`` episodes stacked along a leading task dimension, on ``device``. ``within_group``: the
    share of episodes whose classes all come from one group of the pool (Omniglot: one alphabet), a group
    with at least ``n_way`` classes picked at random; the others draw from the whole pool."""
    groups = [g for g in pool.group_classes if len(g) >= n_way] if within_group > 0 else []
    episodes = []
    for _ in range(meta_batch):
        among = groups[rng.integers(len(groups))] if groups and rng.random() < within_group else None
        episodes.append(sample_episode(pool, n_way, k_shot, n_query, rng, among))
    return Episode(*(torch.stack(parts) for parts in zip(*episodes))).to(device)


def episode_stream(
    pool: ClassPool, n_way: int, k_shot: int, n_query: int, episodes: int, seed: int
) -> list[Episode]:
    """A fixed list of ``episodes`` episodes for evaluation: the same seed gives the same list."""
    rng = np.random.default_rng(seed)
    return [sample_episode(pool, n_way, k_shot, n_query, rng) for _ in range(episodes)]
