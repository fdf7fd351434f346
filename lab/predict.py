"""Predicting the class of one drawing with a meta-learned model adapted to a small support set.

The model was meta-trained on other classes (the shipped one on Omniglot's characters). To
recognise digits it is shown K examples of each (a *support set*) from MNIST's training images or
the bundled digits; to recognise new symbols it is shown the user's own few drawings (a
*taught set*). A :class:`Predictor` adapts once per support set through the shared
``adapt(support_x, support_y, n_way)`` protocol and keeps the result, so predicting a drawing is
one forward pass.
Taught sets and the support montage live in :mod:`lab.taught`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from lab import runs
from lab.calibration import Doubt, checkpoint_file, fit_doubt, read_calibration
from lab.data import dataset_status, load_dataset
from lab.explain import explain
from lab.preprocess import IMAGE_SIZE, normalise_digit, prepare_bytes

DEFAULT_MODEL = runs.DEFAULT_MODEL
DIGIT_SOURCES = ("mnist", "digits")
MNIST_TRAIN_IMAGES = 60_000  # load_dataset('mnist') holds the 60,000 training images first
MAX_K_SHOT = 10
VALIDATION_SEED = 20_240_601  # the held-out digits never change with the support set's seed


resolve_model = runs.resolve_source  # 'default', 'zoo:NAME', a run folder or a checkpoint file


def load_model(source: str | Path = "default", device="cpu"):
    """(config, model) of ``'default'``, a run folder or a checkpoint file, ready to adapt."""
    return runs.load_model(resolve_model(source), device=device)


def load_predictor(source: str | Path = "default", device="cpu", **options):
    """(config, :class:`Predictor`) of a model, with the temperature and doubt rule its checkpoint holds
    (T = 1 and no rule of its own when it holds none: see :mod:`lab.calibration`); ``options`` go to
    :class:`Predictor`."""
    path = checkpoint_file(source)
    config, model = runs.load_model(path, device=device)
    temperature, doubt = read_calibration(path)
    return config, Predictor(model, device, temperature=temperature, doubt=doubt, **options)


# --------------------------------------------------------------------------- support sets


@dataclass(frozen=True, eq=False)
class SupportSet:
    """Labelled examples of each class.

    images: uint8 ``(n, 28, 28)``, bright ink on dark; labels: int64 ``(n,)`` in 0..n_way-1,
    every class present; class_names: one per class; source: where the examples came from.
    validation: other labelled examples of the same classes, uint8 ``(m, 28, 28)`` and ``(m,)``, as a
    drawing looks after preprocessing, on which the doubt rule for this set is chosen (None: none).
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    source: str = ""
    validation: tuple[np.ndarray, np.ndarray] | None = None
    key: str = field(init=False)

    def __post_init__(self):
        if self.images.ndim != 3 or self.images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or self.images.dtype != np.uint8:
            raise ValueError(f"support images must be uint8 (n, 28, 28), not {self.images.dtype} {self.images.shape}")
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} support images but {len(self.labels)} labels")
        if sorted(set(self.labels.tolist())) != list(range(len(self.class_names))):
            raise ValueError(f"every one of the {len(self.class_names)} classes needs at least one example")
        digest = hashlib.sha1(self.images.tobytes())
        digest.update(self.labels.astype(np.int64).tobytes())
        digest.update("\0".join(self.class_names).encode())
        if self.validation is not None:
            images, labels = self.validation
            if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or len(images) != len(labels):
                raise ValueError(f"validation images must be (m, 28, 28) with m labels, not {images.shape}")
            digest.update(images.tobytes())
            digest.update(np.asarray(labels, dtype=np.int64).tobytes())
        object.__setattr__(self, "key", digest.hexdigest())

    @property
    def n_way(self) -> int:
        return len(self.class_names)

    def tensors(self, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """``(n, 1, 28, 28)`` float in [0, 1] and ``(n,)`` int64, as episodes hold them."""
        x = torch.from_numpy(self.images).to(device=device, dtype=torch.float32).div_(255.0).unsqueeze(1)
        return x, torch.from_numpy(self.labels.astype(np.int64)).to(device)


VALIDATION_PER_DIGIT = 20  # held-out digits of each class on which a digit support set's doubt rule is chosen


@dataclass(frozen=True, eq=False)
class DigitBank:
    """Labelled digit images to draw support sets from: images uint8 ``(n, 28, 28)``, labels ``(n,)``."""

    source: str
    images: np.ndarray
    labels: np.ndarray

    @cached_property
    def validation(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:data:`VALIDATION_PER_DIGIT` digits of each class (a fixed seeded choice) as a drawing of them
        looks after preprocessing (:func:`lab.preprocess.normalise_digit`): indices ``(m,)`` into the
        bank, images uint8 ``(m, 28, 28)``, labels ``(m,)``."""
        rng = np.random.default_rng(VALIDATION_SEED)
        index = np.concatenate([rng.choice(np.flatnonzero(self.labels == d), size=VALIDATION_PER_DIGIT, replace=False)
                                for d in range(10)])
        return index, np.stack([normalise_digit(image) for image in self.images[index]]), np.asarray(self.labels)[index]


def load_digit_bank(source: str = "auto", data_dir=None) -> DigitBank:
    """MNIST's training images (``'mnist'``), the bundled digits (``'digits'``), or ``'auto'``: MNIST
    when it is on disk, else the bundled digits."""
    if source == "auto":
        source = "mnist" if dataset_status(data_dir)["mnist"]["available"] else "digits"
    if source not in DIGIT_SOURCES:
        raise ValueError(f"support must be one of {', '.join(DIGIT_SOURCES)}, not {source!r}")
    dataset = load_dataset(source, data_dir if source == "mnist" else None)
    images, labels = dataset.images[:, 0].numpy(), dataset.labels
    if source == "mnist":  # never the test digits: those are what a user's drawing competes with
        images, labels = images[:MNIST_TRAIN_IMAGES], labels[:MNIST_TRAIN_IMAGES]
    return DigitBank(source, images, labels)


def digit_support(bank: DigitBank, k_shot: int, seed: int = 0) -> SupportSet:
    """K examples of each digit 0-9 drawn from ``bank`` with ``seed``: same seed, same set."""
    if not isinstance(k_shot, int) or not 1 <= k_shot <= MAX_K_SHOT:
        raise ValueError(f"k_shot must be a whole number from 1 to {MAX_K_SHOT}, not {k_shot!r}")
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(bank.labels == d), size=k_shot, replace=False) for d in range(10)]
    index = np.concatenate(picks)
    held, images, labels = bank.validation
    others = ~np.isin(held, index)  # never a support example
    return SupportSet(bank.images[index], np.repeat(np.arange(10), k_shot), tuple(str(d) for d in range(10)),
                      f"{bank.source}, seed {seed}", (images[others], labels[others].astype(np.int64)))


# --------------------------------------------------------------------------- prediction


@dataclass(frozen=True, eq=False)
class Prediction:
    """Probabilities over the support set's classes for one image, with the time each part took.

    ``doubt`` is None when the model is sure enough, else a line saying why it is not
    (:class:`lab.calibration.Doubt`).
    """

    class_names: tuple[str, ...]
    probabilities: tuple[float, ...]
    image: np.ndarray  # uint8 (28, 28): what the model saw
    preprocess_ms: float
    adapt_ms: float  # 0 when the support set's adaptation was cached
    predict_ms: float
    doubt: str | None = None
    temperature: float = 1.0
    notes: tuple[str, ...] = ()  # how the file was read, when a user should know (lab.preprocess.read_notes)

    @property
    def top(self) -> str:
        return self.class_names[int(np.argmax(self.probabilities))]

    @property
    def confidence(self) -> float:
        return float(max(self.probabilities))

    @property
    def unsure(self) -> bool:
        return self.doubt is not None

    def to_dict(self) -> dict:
        return {
            "prediction": self.top,
            "confidence": self.confidence,
            "unsure": self.unsure,
            "reason": self.doubt,
            "temperature": self.temperature,
            "notes": list(self.notes),
            "probabilities": dict(zip(self.class_names, self.probabilities)),
            "timings_ms": {"preprocess": self.preprocess_ms, "adapt": self.adapt_ms, "predict": self.predict_ms},
        }


def _ms(t0: float) -> float:
    return round(1000 * (time.perf_counter() - t0), 3)


@contextmanager
def _torch_threads(n: int | None):
    """Run torch's CPU kernels on ``n`` threads meanwhile (per calling thread with OpenMP); None: as they are."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Predictor:
    """A model that adapts once per support set (kept, least recently used first out) and predicts.

    Logits are divided by ``temperature`` (fitted by :mod:`lab.calibration`; 1 leaves them as the
    model gives them), and ``doubt`` says when a prediction is unsure (None: never).

    Safe to share between threads (the page's sessions): the cache is guarded by a lock. On the
    CPU it computes on ``threads`` threads: one drawing, or a support set of tens of images, is
    too little work to split, and splitting it on a busy machine makes it several times slower.
    """

    def __init__(self, model, device="cpu", cache_size: int = 16, threads: int | None = 1, temperature: float = 1.0,
                 doubt: Doubt | None = None):
        if not (isinstance(temperature, (int, float)) and np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, not {temperature!r}")
        self.model = model.eval()
        self.device = torch.device(device)
        self.cache_size = cache_size
        self.threads = threads if self.device.type == "cpu" else None
        self.temperature = float(temperature)
        self.doubt = doubt
        self._adapted: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """Run the preprocessing and the model once on dummy inputs, so a user's first drawing is not the
        slow first call."""
        stroke = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        stroke[6:22, 13:15] = 255
        normalise_digit(stroke)
        support = SupportSet(np.zeros((2, IMAGE_SIZE, IMAGE_SIZE), np.uint8), np.arange(2), ("a", "b"), "warm-up")
        self.probabilities(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE), np.uint8), support)
        with self._lock:
            self._adapted.pop(support.key, None)

    def _adapted_to(self, support: SupportSet):
        """(the model's predictor for ``support``, its doubt rule, the milliseconds adapting took: 0 when cached).

        The doubt rule is chosen on the support set's validation examples when it has some
        (:func:`lab.calibration.fit_doubt`), else it is the predictor's own.
        """
        with self._lock:
            if support.key in self._adapted:
                self._adapted.move_to_end(support.key)
                return (*self._adapted[support.key], 0.0)
        t0 = time.perf_counter()
        x, y = support.tensors(self.device)
        with _torch_threads(self.threads):
            predictor = self.model.adapt(x, y, support.n_way)
            doubt = self.doubt
            if support.validation is not None and len(support.validation[1]):
                images, labels = support.validation
                doubt = fit_doubt(self._raw_logits(predictor, images), torch.from_numpy(labels), self.temperature)
        elapsed = _ms(t0)
        with self._lock:
            self._adapted[support.key] = (predictor, doubt)
            while len(self._adapted) > self.cache_size:
                self._adapted.popitem(last=False)
        return predictor, doubt, elapsed

    def _raw_logits(self, predictor, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device, torch.float32).div_(255.0).unsqueeze(1)
        with torch.no_grad():
            return predictor(x).float().cpu()

    def explain(self, image: np.ndarray, support: SupportSet) -> dict:
        """Why the model says what it says of one preprocessed uint8 ``(28, 28)`` image (:func:`lab.explain.explain`),
        from the adaptation to ``support`` already made, on the predictor's threads."""
        adapted = self._adapted_to(support)[0]
        x, y = support.tensors(self.device)
        with _torch_threads(self.threads):
            return explain(self.model, x, y, torch.from_numpy(image).to(self.device, torch.float32).div(255.0)[None],
                           support.class_names, self.temperature, adapted)

    def adapt(self, support: SupportSet) -> float:
        """Adapt to ``support`` unless already done; the milliseconds it took (0 when cached)."""
        return self._adapted_to(support)[2]

    def doubt_for(self, support: SupportSet) -> Doubt | None:
        """The doubt rule predictions against ``support`` follow (None: never unsure)."""
        return self._adapted_to(support)[1]

    def logits(self, images: np.ndarray, support: SupportSet) -> np.ndarray:
        """uint8 ``(n, 28, 28)`` -> logits ``(n, n_way)`` over ``support``'s classes, divided by the temperature."""
        predictor, _, _ = self._adapted_to(support)
        with _torch_threads(self.threads):
            return (self._raw_logits(predictor, images) / self.temperature).numpy()

    def probabilities(self, images: np.ndarray, support: SupportSet) -> np.ndarray:
        """uint8 ``(n, 28, 28)`` -> calibrated probabilities ``(n, n_way)`` over ``support``'s classes."""
        return torch.softmax(torch.from_numpy(self.logits(images, support)), -1).numpy()

    def decide(self, images: np.ndarray, support: SupportSet) -> list[tuple[np.ndarray, str | None]]:
        """uint8 ``(n, 28, 28)`` -> for each image, its probabilities ``(n_way,)`` and why it is unsure (or None)."""
        logits = self.logits(images, support)
        probs = torch.softmax(torch.from_numpy(logits), -1).numpy()
        doubt = self.doubt_for(support)
        return [(p, doubt.reason(p, z, support.class_names) if doubt else None) for p, z in zip(probs, logits)]

    def predict(self, image: np.ndarray, support: SupportSet, preprocess_ms: float = 0.0) -> Prediction:
        """One preprocessed uint8 ``(28, 28)`` image -> :class:`Prediction`."""
        adapt_ms = self.adapt(support)
        t0 = time.perf_counter()
        [(probs, doubt)] = self.decide(image[None], support)
        return Prediction(support.class_names, tuple(round(float(p), 6) for p in probs), image, preprocess_ms,
                          adapt_ms, _ms(t0), doubt, self.temperature)

    def predict_bytes(self, data: bytes, support: SupportSet) -> Prediction:
        """Image file bytes -> :class:`Prediction`; bad input raises :class:`~lab.preprocess.BadImage`."""
        t0 = time.perf_counter()
        image, notes = prepare_bytes(data)
        return dataclasses.replace(self.predict(image, support, _ms(t0)), notes=notes)
