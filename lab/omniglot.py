"""Omniglot from torchvision's layout: its characters, drawers, and the Vinyals, background and small splits."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lab.fewshot import (OMNIGLOT_SMALL, SPLIT_SCHEMES, SPLITS, DatasetUnavailable, FewShotDataset, _cached,
                         _fit_square, _to_tensor, data_dir)


def _decode_omniglot(path: str) -> np.ndarray:
    # Omniglot's PNGs are black strokes on white; invert to bright ink on dark.
    with Image.open(path) as im:
        return 255 - _fit_square(im.convert("L"))


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

