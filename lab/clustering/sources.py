"""Task sources with known structure: every task carries its true group.

``within-alphabet``: Omniglot tasks whose classes all come from one alphabet (the alphabet is
the true group). ``mixed``: tasks from Omniglot, MNIST, the bundled digits and optionally a folder
of images (the dataset is the true group).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from lab.data import ClassPool, DatasetUnavailable, load_dataset
from lab.episodes import Episode, sample_episode

SOURCES = ("within-alphabet", "mixed")
MIXED = ("omniglot", "mnist", "digits")  # the datasets of the mixed source, each its own true group
FOLDER_SPLIT_MIN_CLASSES = 5

@dataclass
class TaskSet:
    """Sampled tasks and the true group of each.

    ``episodes[i]`` is task ``i``; its support set is ``(n_way * k_shot, 1, 28, 28)``.
    """

    source: str
    episodes: list[Episode]
    groups: list[str]
    pool_ids: list[int] = field(default_factory=list)  # the pool of the source each task was drawn from

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def group_names(self) -> list[str]:
        return sorted(set(self.groups))

    @property
    def group_ids(self) -> np.ndarray:
        index = {g: i for i, g in enumerate(self.group_names)}
        return np.array([index[g] for g in self.groups], dtype=np.int64)

    def batch(self, which=None) -> Episode:
        """The tasks ``which`` (all by default) stacked along a leading task dimension."""
        chosen = self.episodes if which is None else [self.episodes[i] for i in which]
        return Episode(*(torch.stack(parts) for parts in zip(*chosen)))


@dataclass(frozen=True)
class TaskSource:
    """Pools of classes, each with the true group of the tasks drawn from it.

    A task is drawn by picking a pool uniformly at random, then an episode inside that pool.
    """

    name: str
    pools: tuple[ClassPool, ...]
    groups: tuple[str, ...]
    skipped: tuple[str, ...] = field(default=())  # datasets left out because they are not on disk

    def sample(self, n_tasks: int, n_way: int, k_shot: int, n_query: int, seed: int) -> TaskSet:
        """``n_tasks`` tasks drawn with ``seed``: the same seed gives the same tasks."""
        usable = [i for i, p in enumerate(self.pools) if len(p) >= n_way and p.min_class_size >= k_shot + n_query]
        if not usable:
            raise ValueError(f"no group of the {self.name} source can make {n_way}-way tasks with "
                             f"{k_shot} + {n_query} images per class")
        if n_tasks < 1:
            raise ValueError(f"tasks: must be at least 1, not {n_tasks}")
        rng = np.random.default_rng(seed)
        which = rng.choice(usable, size=n_tasks)
        episodes = [sample_episode(self.pools[i], n_way, k_shot, n_query, rng) for i in which]
        return TaskSet(self.name, episodes, [self.groups[i] for i in which], [int(i) for i in which])

    def class_names(self, tasks: TaskSet, i: int) -> list[str]:
        """The names of task ``i``'s classes, in label order."""
        pool = self.pools[tasks.pool_ids[i]]
        return [pool.class_names[int(c)] for c in tasks.episodes[i].classes]


@lru_cache(maxsize=8)
def _load(name: str, data_dir: str | None, scheme: str | None, strokes: str = "as-drawn"):
    """A dataset kept in memory for this process: sources are drawn from again and again."""
    return load_dataset(name, data_dir, scheme, strokes)


def _sub_pool(pool: ClassPool, keep: np.ndarray, name: str) -> ClassPool:
    return ClassPool(name, pool.images, pool.classes[keep], tuple(pool.members[i] for i in keep),
                     tuple(pool.class_names[i] for i in keep), tuple(pool.class_groups[i] for i in keep))


def load_source(name: str, split: str = "test", data_dir: str | None = None, folder: str | None = None,
                strokes: str = "as-drawn") -> TaskSource:
    """The task source ``name`` over the classes of ``split`` ('train', 'val' or 'test').

    ``within-alphabet`` uses Omniglot's 'background' scheme (the test split is the 20 evaluation
    alphabets); ``mixed`` uses each dataset's default scheme, so its test tasks hold classes
    that a model meta-trained on the train split never saw. A dataset that is not on disk is
    left out of ``mixed`` (and named in ``skipped``); ``folder`` adds a folder of images. ``strokes``:
    the images as drawn, or redrawn as the model that meets them was trained on (:mod:`lab.data`); the
    same seed draws the same tasks either way.
    """
    if name not in SOURCES:
        raise ValueError(f"source: unknown {name!r}; choose one of {', '.join(SOURCES)}")
    if split not in ("train", "val", "test"):
        raise ValueError(f"split: must be 'train', 'val' or 'test', not {split!r}")
    if name == "within-alphabet":
        pool = _load("omniglot", data_dir, "background", strokes).pool(split)
        alphabets = sorted(set(pool.class_groups))
        groups = np.array(pool.class_groups)
        pools = tuple(_sub_pool(pool, np.flatnonzero(groups == a), f"omniglot:{a}") for a in alphabets)
        return TaskSource(name, pools, tuple(alphabets))
    pools, groups, skipped = [], [], []
    for dataset in MIXED:
        try:
            pools.append(_load(dataset, data_dir, "background" if dataset == "omniglot" else None, strokes).pool(split))
            groups.append(dataset)
        except DatasetUnavailable:
            skipped.append(dataset)
    if folder:
        images = load_dataset("folder", folder, strokes=strokes)
        own = images.pool(split)
        # A folder too small to make 5-way tasks from its share of classes lends all of them to every split.
        pools.append(own if len(own) >= FOLDER_SPLIT_MIN_CLASSES else images.pool("all"))
        groups.append(f"folder:{Path(folder).name}")
    return TaskSource(name, tuple(pools), tuple(groups), tuple(skipped))
