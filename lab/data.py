"""Few-shot image datasets: Omniglot, MNIST, scikit-learn's digits, and a folder of images.

Every dataset is held as one :class:`FewShotDataset`: the decoded images as a uint8
tensor ``(n_images, 1, 28, 28)`` with bright ink on a dark ground (MNIST's polarity),
an integer label per image, a name and a group per label, and named class splits.

A *class* of a split is a ``(label, quarter_turns)`` pair: Omniglot's standard
(Vinyals) split takes every character at 0/90/180/270 degrees as four classes, the
other splits use ``quarter_turns == 0``. Meta-train, meta-validation and meta-test
splits never share a class.

Decoded tensors are cached under :func:`cache_dir`, so the second load is fast. The shapes and the
cache live in :mod:`lab.fewshot`, Omniglot's reading in :mod:`lab.omniglot`; this module names them all.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lab.fewshot import (DATASETS, DIGIT_SPLIT, IMAGE_SUFFIXES, OMNIGLOT_SMALL, SPLIT_SCHEMES,  # noqa: F401
                         SPLITS, ClassPool, DatasetUnavailable, FewShotDataset, _cached, _to_tensor, cache_dir,
                         data_dir)
from lab.omniglot import load_omniglot, omniglot_drawers  # noqa: F401
from lab.preprocess import BadImage, normalise_digit, preprocess_image

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


def load_dataset(name: str, root: str | os.PathLike | None = None, scheme: str | None = None,
                 strokes: str = "as-drawn") -> FewShotDataset:
    """Load a dataset by name. ``root`` is the data folder (for ``folder``: the image folder itself);
    ``strokes="normalised"`` redraws every image's strokes first (:func:`normalised_strokes`).

    Raises :class:`DatasetUnavailable` with a message saying where it looked when the data is missing.
    """
    dataset = _load_dataset(name, root, scheme)
    return normalised_strokes(dataset) if strokes == "normalised" else dataset


def normalised_strokes(dataset: FewShotDataset) -> FewShotDataset:
    """``dataset`` with each image's strokes redrawn as a drawing's are before a model sees it
    (:func:`lab.preprocess.normalise_digit`: thinned, drawn again at MNIST's width, fitted and centred),
    so a model trained on one dataset meets another's images, and the pad's, in the same hand.

    The redrawn images are cached by the content of the originals; an image with no stroke to redraw
    stays as it is."""
    originals = dataset.images[:, 0].numpy()
    digest = hashlib.sha1(np.ascontiguousarray(originals).tobytes()).hexdigest()[:20]

    def build() -> dict:
        def redraw(image: np.ndarray) -> np.ndarray:
            try:
                return normalise_digit(image)
            except BadImage:
                return image

        return {"images": _to_tensor([redraw(image) for image in originals])}

    payload = _cached(f"strokes:{dataset.name}:{digest}", build)
    return dataclasses.replace(dataset, images=payload["images"])


def _load_dataset(name: str, root: str | os.PathLike | None, scheme: str | None) -> FewShotDataset:
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
