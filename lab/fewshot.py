"""The shapes every dataset takes: a :class:`FewShotDataset` of decoded images and its :class:`ClassPool`
splits, where datasets live on disk, and the cache of decoded tensors.

A *class* of a split is a ``(label, quarter_turns)`` pair: Omniglot's standard
(Vinyals) split takes every character at 0/90/180/270 degrees as four classes, the
other splits use ``quarter_turns == 0``. Meta-train, meta-validation and meta-test
splits never share a class.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image


DATASETS = ("digits", "omniglot", "mnist", "folder")
SPLITS = ("train", "val", "test")
IMAGE_SIZE = 28
CACHE_VERSION = 1
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

# Omniglot's "minimal" background subsets of the original one-shot challenge (Lake et al.).
OMNIGLOT_SMALL = {
    "small1": ("Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"),
    "small2": ("Greek", "Japanese_(katakana)", "Latin", "Sanskrit", "Tagalog"),
}
SPLIT_SCHEMES = {
    "omniglot": ("vinyals", "background", "small1", "small2"),
    "mnist": ("rotated", "plain"),
    "digits": ("rotated", "plain"),
    "folder": ("ratio",),
}
# For datasets of ten digits: digits 0-4 train, 5-6 validate, 7-9 test. The 'rotated' scheme takes
# each digit at 0/90/180/270 degrees as four classes (as Omniglot's Vinyals split does), so that
# 5-way tasks exist in every split; 'plain' keeps the ten digits as they are.
DIGIT_SPLIT = {"train": (0, 1, 2, 3, 4), "val": (5, 6), "test": (7, 8, 9)}


class DatasetUnavailable(RuntimeError):
    """A dataset is not on disk and could not be fetched; the message says where it was looked for."""


@dataclass(frozen=True)
class ClassPool:
    """The classes of one split, ready for episode sampling.

    ``classes`` is ``(n_classes, 2)``: label and quarter turns of each class.
    ``members[i]`` holds the indices into ``images`` of class ``i``'s examples.
    """

    name: str
    images: torch.Tensor
    classes: np.ndarray
    members: tuple[np.ndarray, ...]
    class_names: tuple[str, ...]
    class_groups: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.classes)

    @cached_property
    def group_classes(self) -> tuple[np.ndarray, ...]:
        """The class indices of each group (Omniglot: alphabet), groups in name order."""
        names = np.array(self.class_groups)
        return tuple(np.flatnonzero(names == g) for g in sorted(set(self.class_groups)))

    @property
    def min_class_size(self) -> int:
        return min(len(m) for m in self.members) if self.members else 0

    def class_images(self, i: int, which: np.ndarray | None = None) -> torch.Tensor:
        """uint8 ``(n, 1, H, W)`` images of class ``i``, rotated as the class says."""
        idx = self.members[i] if which is None else self.members[i][which]
        x = self.images.index_select(0, torch.from_numpy(idx))  # far faster than x[idx] on a busy CPU
        turns = int(self.classes[i, 1])
        return torch.rot90(x, turns, dims=(2, 3)) if turns else x


@dataclass
class FewShotDataset:
    """Decoded images, labels, names, groups and class splits of one dataset."""

    name: str
    images: torch.Tensor  # uint8 (n_images, 1, 28, 28)
    labels: np.ndarray  # int64 (n_images,)
    label_names: list[str]
    label_groups: list[str]
    splits: dict[str, np.ndarray] = field(default_factory=dict)  # split -> (n, 2) [label, turns]
    scheme: str = ""

    @property
    def n_labels(self) -> int:
        return len(self.label_names)

    def pool(self, split: str, turned: bool = False) -> ClassPool:
        """The classes of ``split`` ('train', 'val', 'test' or 'all') as a :class:`ClassPool`.

        ``turned``: each label of the split at all four quarter turns, each turn a class of its own
        (a split that has them already keeps them once)."""
        if split == "all":
            classes = np.stack([np.arange(self.n_labels), np.zeros(self.n_labels, dtype=np.int64)], 1)
        elif split in self.splits:
            classes = self.splits[split]
        else:
            raise ValueError(f"{self.name} has no split {split!r}; it has {', '.join([*self.splits, 'all'])}")
        if turned:
            labels = np.unique(classes[:, 0])
            classes = np.stack([np.repeat(labels, 4), np.tile(np.arange(4), len(labels))], 1).astype(np.int64)
        order = np.argsort(self.labels, kind="stable")
        bounds = np.searchsorted(self.labels[order], np.arange(self.n_labels + 1))
        by_label = [order[bounds[i] : bounds[i + 1]] for i in range(self.n_labels)]
        members = tuple(by_label[label] for label, _ in classes)
        suffix = lambda turns: f"/rot{90 * turns:03d}" if turns else ""  # noqa: E731
        names = tuple(self.label_names[label] + suffix(turns) for label, turns in classes)
        groups = tuple(self.label_groups[label] for label, _ in classes)
        return ClassPool(f"{self.name}:{split}", self.images, classes, members, names, groups)

    def summary(self) -> dict:
        """Classes and images per split, for ``python -m lab datasets``."""
        out = {"scheme": self.scheme, "images": int(len(self.images)), "labels": self.n_labels, "splits": {}}
        for split in self.splits:
            pool = self.pool(split)
            out["splits"][split] = {"classes": len(pool), "images": int(sum(len(m) for m in pool.members))}
        return out


# --------------------------------------------------------------------------- locations


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The data root: ``explicit``, else ``$LAB_DATA_DIR``, else ``~/.local/share/meta-lab/data``."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("LAB_DATA_DIR"):
        return Path(os.environ["LAB_DATA_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "meta-lab" / "data"


def cache_dir() -> Path:
    """A writable folder for decoded tensors: ``$LAB_CACHE_DIR`` or ``~/.cache/meta-lab``."""
    if os.environ.get("LAB_CACHE_DIR"):
        path = Path(os.environ["LAB_CACHE_DIR"]).expanduser()
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "meta-lab"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cached(key: str, build) -> dict:
    """Load the decoded arrays stored under ``key``, or build and store them."""
    digest = hashlib.sha1(f"{CACHE_VERSION}:{key}".encode()).hexdigest()[:16]
    path = cache_dir() / f"{key.split(':')[0]}-{digest}.pt"
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # a damaged cache file is rebuilt, never trusted
            path.unlink(missing_ok=True)
    payload = build()
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return payload


# --------------------------------------------------------------------------- image helpers


def _to_tensor(arrays: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.stack(arrays) if isinstance(arrays, list) else arrays))[:, None]


def _fit_square(img: Image.Image, size: int = IMAGE_SIZE) -> np.ndarray:
    """Resize a grayscale image to ``size`` x ``size`` with an antialiasing filter."""
    return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)

