"""Few-shot image datasets: Omniglot, MNIST, scikit-learn's digits, and a folder of images.

Every dataset is held as one :class:`FewShotDataset`: the decoded images as a uint8
tensor ``(n_images, 1, 28, 28)`` with bright ink on a dark ground (MNIST's polarity),
an integer label per image, a name and a group per label, and named class splits.

A *class* of a split is a ``(label, quarter_turns)`` pair: Omniglot's standard
(Vinyals) split takes every character at 0/90/180/270 degrees as four classes, the
other splits use ``quarter_turns == 0``. Meta-train, meta-validation and meta-test
splits never share a class.

Decoded tensors are cached under :func:`cache_dir`, so the second load is fast.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lab.preprocess import preprocess_image

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

    def pool(self, split: str) -> ClassPool:
        """The classes of ``split`` ('train', 'val', 'test' or 'all') as a :class:`ClassPool`."""
        if split == "all":
            classes = np.stack([np.arange(self.n_labels), np.zeros(self.n_labels, dtype=np.int64)], 1)
        elif split in self.splits:
            classes = self.splits[split]
        else:
            raise ValueError(f"{self.name} has no split {split!r}; it has {', '.join([*self.splits, 'all'])}")
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


def _decode_omniglot(path: str) -> np.ndarray:
    # Omniglot's PNGs are black strokes on white; invert to bright ink on dark.
    with Image.open(path) as im:
        return 255 - _fit_square(im.convert("L"))


# --------------------------------------------------------------------------- Omniglot


def _omniglot_files(root: Path) -> list[tuple[str, str, str, list[Path]]]:
    """(background|evaluation, alphabet, character, files) for every character, in a stable order."""
    chars = []
    for part in ("background", "evaluation"):
        base = root / "omniglot-py" / f"images_{part}"
        for alphabet in sorted(p for p in base.iterdir() if p.is_dir()):
            for char in sorted(p for p in alphabet.iterdir() if p.is_dir()):
                chars.append((part, alphabet.name, char.name, sorted(char.glob("*.png"))))
    return chars


def _ensure_omniglot(root: Path) -> None:
    missing = [p for p in ("background", "evaluation") if not (root / "omniglot-py" / f"images_{p}").is_dir()]
    if not missing:
        return
    try:
        from torchvision.datasets import Omniglot

        for part in missing:
            Omniglot(str(root), background=(part == "background"), download=True)
    except Exception as err:
        raise DatasetUnavailable(
            f"Omniglot is not under {root / 'omniglot-py'} and could not be downloaded "
            f"({type(err).__name__}: {err}). Point --data-dir or LAB_DATA_DIR at a folder holding "
            "omniglot-py/images_background and images_evaluation."
        ) from None


def _read_split_file(path: Path) -> list[tuple[str, int]]:
    """Lines ``Alphabet/characterNN/rotDDD`` -> (``Alphabet/characterNN``, quarter turns)."""
    out = []
    for line in path.read_text().split():
        name, rot = line.rsplit("/", 1)
        out.append((name, int(rot.removeprefix("rot")) // 90))
    return out


def _find_vinyals(root: Path) -> Path | None:
    for base in (root / "omniglot-splits" / "vinyals", root / "omniglot-py" / "splits" / "vinyals"):
        if (base / "train.txt").is_file():
            return base
    return None


def _omniglot_splits(names, groups, parts, scheme: str, root: Path) -> dict[str, np.ndarray]:
    index = {name: i for i, name in enumerate(names)}
    if scheme == "vinyals":
        folder = _find_vinyals(root)
        if folder is None:
            raise DatasetUnavailable(
                f"The Vinyals split files (omniglot-splits/vinyals/train.txt, val.txt, test.txt) are not under {root}; "
                "choose the 'background' split instead."
            )
        return {
            split: np.array([(index[n], t) for n, t in _read_split_file(folder / f"{split}.txt")], dtype=np.int64)
            for split in SPLITS
        }
    background_alphabets = sorted({g for g, p in zip(groups, parts) if p == "background"})
    if scheme == "background":
        val_alphabets = set(background_alphabets[-5:])
        train_alphabets = set(background_alphabets) - val_alphabets
    elif scheme in OMNIGLOT_SMALL:
        train_alphabets = set(OMNIGLOT_SMALL[scheme])
        val_alphabets = set(background_alphabets) - train_alphabets
    else:
        raise ValueError(f"omniglot has no split scheme {scheme!r}; choose one of {', '.join(SPLIT_SCHEMES['omniglot'])}")
    pick = lambda keep: np.array([(i, 0) for i, g in enumerate(groups) if keep(i, g)], dtype=np.int64)  # noqa: E731
    return {
        "train": pick(lambda i, g: g in train_alphabets),
        "val": pick(lambda i, g: g in val_alphabets),
        "test": pick(lambda i, g: parts[i] == "evaluation"),
    }


def omniglot_drawers(root: str | os.PathLike | None = None) -> np.ndarray:
    """The drawer (1 to 20) of every Omniglot image, in the order of :func:`load_omniglot`'s images.

    Omniglot names each image ``<character id>_<drawer>.png``.
    """
    root = data_dir(root)
    _ensure_omniglot(root)
    return np.array([int(f.stem.rsplit("_", 1)[1]) for *_, fs in _omniglot_files(root) for f in fs], dtype=np.int64)


def load_omniglot(root: Path, scheme: str = "vinyals") -> FewShotDataset:
    _ensure_omniglot(root)
    chars = _omniglot_files(root)

    def build() -> dict:
        files = [str(f) for *_, fs in chars for f in fs]
        workers = min(4, os.cpu_count() or 1)
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                arrays = list(pool.map(_decode_omniglot, files, chunksize=256))
        else:
            arrays = [_decode_omniglot(f) for f in files]
        labels = np.concatenate([np.full(len(fs), i) for i, (*_, fs) in enumerate(chars)])
        return {"images": _to_tensor(arrays), "labels": torch.from_numpy(labels.astype(np.int64))}

    n_files = sum(len(fs) for *_, fs in chars)
    payload = _cached(f"omniglot:{root.resolve()}:{n_files}", build)
    names = [f"{alphabet}/{char}" for _, alphabet, char, _ in chars]
    groups = [alphabet for _, alphabet, _, _ in chars]
    parts = [part for part, *_ in chars]
    return FewShotDataset(
        "omniglot",
        payload["images"],
        payload["labels"].numpy(),
        names,
        groups,
        _omniglot_splits(names, groups, parts, scheme, root),
        scheme,
    )


# --------------------------------------------------------------------------- MNIST

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a numpy array, without writing anything."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _mnist_paths(root: Path) -> list[Path] | None:
    raw = root / "MNIST" / "raw"
    found = []
    for name in MNIST_FILES:
        candidates = [raw / f"{name}.gz", raw / name]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found


def _digit_splits(scheme: str | None) -> dict[str, np.ndarray]:
    turns = range(4) if (scheme or "rotated") == "rotated" else range(1)
    return {s: np.array([(d, t) for d in ds for t in turns], dtype=np.int64) for s, ds in DIGIT_SPLIT.items()}


def load_mnist(root: Path, scheme: str | None = None) -> FewShotDataset:
    paths = _mnist_paths(root)
    if paths is None:
        try:
            from torchvision.datasets import MNIST

            MNIST(str(root), train=True, download=True)
            MNIST(str(root), train=False, download=True)
        except Exception as err:
            raise DatasetUnavailable(
                f"MNIST is not under {root / 'MNIST' / 'raw'} and could not be downloaded "
                f"({type(err).__name__}: {err}). Point --data-dir or LAB_DATA_DIR at a folder holding MNIST/raw/*.gz."
            ) from None
        paths = _mnist_paths(root)

    def build() -> dict:
        train_x, train_y, test_x, test_y = (_read_idx(p) for p in paths)
        images = np.concatenate([train_x, test_x])
        labels = np.concatenate([train_y, test_y]).astype(np.int64)
        return {"images": _to_tensor(images), "labels": torch.from_numpy(labels)}

    payload = _cached(f"mnist:{root.resolve()}", build)
    names = [str(d) for d in range(10)]
    return FewShotDataset(
        "mnist", payload["images"], payload["labels"].numpy(), names, ["digit"] * 10, _digit_splits(scheme),
        scheme or "rotated",
    )


# --------------------------------------------------------------------------- scikit-learn digits


def load_digits(scheme: str | None = None) -> FewShotDataset:
    """scikit-learn's bundled 8x8 digits, scaled MNIST-style: fit to 20x20, centred in 28x28."""

    def build() -> dict:
        from sklearn.datasets import load_digits as sk_digits

        bunch = sk_digits()
        scaled = (bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        arrays = []
        for a in scaled:
            inner = np.asarray(Image.fromarray(a).resize((20, 20), Image.Resampling.BICUBIC), dtype=np.uint8)
            arrays.append(np.pad(inner, 4))
        return {"images": _to_tensor(arrays), "labels": torch.from_numpy(bunch.target.astype(np.int64))}

    payload = _cached("digits:sklearn", build)
    names = [str(d) for d in range(10)]
    return FewShotDataset(
        "digits", payload["images"], payload["labels"].numpy(), names, ["digit"] * 10, _digit_splits(scheme),
        scheme or "rotated",
    )


# --------------------------------------------------------------------------- a folder of images


def _decode_any(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return preprocess_image(im)


def load_folder(folder: Path) -> FewShotDataset:
    """A user's images: one sub-folder per class, any size and mode, made grayscale 28x28.

    With ten or more classes they are split 60/20/20 (in sorted order) into train/val/test;
    with fewer, every class goes to the test split.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatasetUnavailable(f"The image folder {folder} does not exist.")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [sorted(f for f in c.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES) for c in classes]
    kept = [(c, fs) for c, fs in zip(classes, files) if fs]
    if len(kept) < 2:
        raise DatasetUnavailable(
            f"The image folder {folder} needs at least two sub-folders of images (one per class); found {len(kept)}."
        )

    def build() -> dict:
        arrays, labels, bad = [], [], []
        for i, (_, fs) in enumerate(kept):
            for f in fs:
                try:
                    arrays.append(_decode_any(str(f)))
                    labels.append(i)
                except Exception as err:  # unreadable files are skipped and reported
                    bad.append(f"{f.name}: {err}")
        if not arrays:
            raise DatasetUnavailable(f"No readable image in {folder}: {'; '.join(bad[:3])}")
        return {"images": _to_tensor(arrays), "labels": torch.tensor(labels, dtype=torch.int64), "skipped": bad}

    stamp = sum(f.stat().st_mtime_ns + f.stat().st_size for _, fs in kept for f in fs)
    payload = _cached(f"folder:{folder.resolve()}:{stamp}", build)
    names = [c.name for c, _ in kept]
    n = len(names)
    if n >= 10:
        n_train, n_val = round(0.6 * n), round(0.2 * n)
        cut = {"train": range(0, n_train), "val": range(n_train, n_train + n_val), "test": range(n_train + n_val, n)}
    else:
        cut = {"train": range(0), "val": range(0), "test": range(n)}
    splits = {s: np.array([(i, 0) for i in r], dtype=np.int64).reshape(-1, 2) for s, r in cut.items()}
    return FewShotDataset("folder", payload["images"], payload["labels"].numpy(), names, [folder.name] * n, splits, "ratio")


# --------------------------------------------------------------------------- entry point


def load_dataset(name: str, root: str | os.PathLike | None = None, scheme: str | None = None) -> FewShotDataset:
    """Load a dataset by name. ``root`` is the data folder (for ``folder``: the image folder itself).

    Raises :class:`DatasetUnavailable` with a message saying where it looked when the data is missing.
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, not {name!r}")
    if scheme is not None and scheme not in SPLIT_SCHEMES[name]:
        raise ValueError(f"{name} has no split scheme {scheme!r}; choose one of {', '.join(SPLIT_SCHEMES[name])}")
    if name == "digits":
        return load_digits(scheme)
    if name == "folder":
        if root is None:
            raise DatasetUnavailable("The folder dataset needs the image folder: pass --data-dir FOLDER.")
        return load_folder(Path(root))
    base = data_dir(root)
    if name == "mnist":
        return load_mnist(base, scheme)
    return load_omniglot(base, scheme or "vinyals")


def dataset_status(root: str | os.PathLike | None = None) -> dict[str, dict]:
    """Which datasets are present (without decoding the images), for the home page and the CLI."""
    base = data_dir(root)
    return {
        "digits": {"available": True, "where": "bundled with scikit-learn"},
        "omniglot": {
            "available": all((base / "omniglot-py" / f"images_{p}").is_dir() for p in ("background", "evaluation")),
            "where": str(base / "omniglot-py"),
        },
        "mnist": {"available": _mnist_paths(base) is not None, "where": str(base / "MNIST" / "raw")},
    }
