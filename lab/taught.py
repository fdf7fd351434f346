"""Taught sets: the classes a user teaches from a few drawings each, and the montage of a support set.

A taught set travels as a small JSON file (format :data:`TAUGHT_FORMAT`, version
:data:`TAUGHT_VERSION`) holding the class names and the 28x28 drawings, validated on load.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import numpy as np

from lab.predict import SupportSet
from lab.preprocess import IMAGE_SIZE

TAUGHT_FORMAT = "meta-learning-lab/taught-set"
TAUGHT_VERSION = 1
MIN_CLASSES, MAX_CLASSES = 2, 10
MAX_EXAMPLES = 5
MAX_NAME = 40
MAX_TAUGHT_BYTES = 1_000_000


class BadTaughtSet(ValueError):
    """A taught-set file that cannot be used; the message says why in one line."""


@dataclass(frozen=True, eq=False)
class TaughtSet:
    """Classes a user taught from a few drawings each.

    class_names: 2-10 distinct names; examples: per class, 1-5 uint8 ``(28, 28)`` drawings.
    """

    class_names: tuple[str, ...]
    examples: tuple[tuple[np.ndarray, ...], ...]

    def __post_init__(self):
        names, examples = self.class_names, self.examples
        if not MIN_CLASSES <= len(names) <= MAX_CLASSES:
            raise BadTaughtSet(f"a taught set has {MIN_CLASSES} to {MAX_CLASSES} classes, not {len(names)}")
        for name in names:
            if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
                raise BadTaughtSet(f"class name {name!r} must be 1 to {MAX_NAME} characters")
        if len({n.strip().casefold() for n in names}) != len(names):
            raise BadTaughtSet(f"class names must differ: {', '.join(names)}")
        if len(examples) != len(names):
            raise BadTaughtSet(f"{len(names)} class names but examples for {len(examples)} classes")
        for name, shots in zip(names, examples):
            if not 1 <= len(shots) <= MAX_EXAMPLES:
                raise BadTaughtSet(f"class {name!r} has {len(shots)} examples; each class needs 1 to {MAX_EXAMPLES}")
            for shot in shots:
                if not isinstance(shot, np.ndarray) or shot.shape != (IMAGE_SIZE, IMAGE_SIZE) or shot.dtype != np.uint8:
                    raise BadTaughtSet(f"an example of {name!r} is not a uint8 28x28 image")

    def support(self) -> SupportSet:
        images = np.stack([shot for shots in self.examples for shot in shots])
        labels = np.concatenate([np.full(len(shots), i) for i, shots in enumerate(self.examples)]).astype(np.int64)
        return SupportSet(images, labels, self.class_names, "taught")

    def to_bytes(self) -> bytes:
        """The taught set as a small JSON file (each drawing: 784 bytes, base64)."""
        doc = {
            "format": TAUGHT_FORMAT,
            "version": TAUGHT_VERSION,
            "image_size": IMAGE_SIZE,
            "classes": [
                {"name": name, "examples": [base64.b64encode(shot.tobytes()).decode("ascii") for shot in shots]}
                for name, shots in zip(self.class_names, self.examples)
            ],
        }
        return json.dumps(doc, ensure_ascii=False, indent=1).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> TaughtSet:
        """Read and validate a taught-set file; anything wrong raises :class:`BadTaughtSet`."""
        if not data:
            raise BadTaughtSet("the taught-set file is empty")
        if len(data) > MAX_TAUGHT_BYTES:
            raise BadTaughtSet(f"the taught-set file is {len(data):,} bytes; the limit is {MAX_TAUGHT_BYTES:,}")
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise BadTaughtSet("not a taught-set file: it is not JSON") from None
        if not isinstance(doc, dict) or doc.get("format") != TAUGHT_FORMAT:
            raise BadTaughtSet(f"not a taught-set file: its format is not {TAUGHT_FORMAT!r}")
        if doc.get("version") != TAUGHT_VERSION:
            raise BadTaughtSet(f"this taught set is version {doc.get('version')!r}; "
                               f"this lab reads version {TAUGHT_VERSION}")
        if doc.get("image_size") != IMAGE_SIZE:
            raise BadTaughtSet(f"the drawings must be {IMAGE_SIZE}x{IMAGE_SIZE}, not {doc.get('image_size')!r}")
        classes = doc.get("classes")
        if not isinstance(classes, list) or not all(isinstance(c, dict) for c in classes):
            raise BadTaughtSet("the taught set's 'classes' must be a list of {name, examples}")
        names, examples = [], []
        for c in classes:
            names.append(c.get("name"))
            shots = c.get("examples")
            if not isinstance(shots, list):
                raise BadTaughtSet(f"class {c.get('name')!r} has no list of examples")
            examples.append(tuple(_decode_drawing(s, c.get("name")) for s in shots))
        return cls(tuple(names), tuple(examples))


def _decode_drawing(text, name) -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=True)
    except (TypeError, ValueError):
        raise BadTaughtSet(f"an example of {name!r} is not base64 text") from None
    if len(raw) != IMAGE_SIZE * IMAGE_SIZE:
        raise BadTaughtSet(f"an example of {name!r} holds {len(raw)} bytes, not {IMAGE_SIZE * IMAGE_SIZE}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE).copy()


# --------------------------------------------------------------------------- pictures


def montage(images: np.ndarray, rows: int, gap: int = 2) -> np.ndarray:
    """uint8 ``(n, h, w)`` laid out row by row on ``rows`` rows -> one uint8 image, with gaps."""
    n, h, w = images.shape
    cols = -(-n // rows)
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), 60, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = image
    return out
