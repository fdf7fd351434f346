"""A corpus of pad drawings made from real MNIST digits, to measure Draw & Predict as people use it.

Each drawing is one MNIST test digit's skeleton (the centre line of its strokes) drawn again with a
round pen of a chosen width on a ``PAD`` x ``PAD`` pad, as the page's canvas sends it: an RGBA PNG
of dark ink (``INK``) on white paper. The pen can be thin or thick, the digit rotated, shrunk and
moved, so accuracy can be read per stroke width, per rotation and per size. Everything is a pure
function of its arguments and a numpy Generator: the same seed gives the same corpus.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.morphology import skeletonize

PAD = 280  # the page's drawing pad is PAD x PAD pixels
INK = 17  # the pad's stroke colour, #111111
WIDTHS = (4, 6, 8, 10, 14, 20, 28, 32, 40)  # pen widths in pad pixels; the page's slider spans 6 to 40
ROTATIONS = (-20, -10, 0, 10, 20)  # degrees, counter-clockwise
SIZES = {"large": (0.8, "centre"), "medium": (0.6, "centre"), "small": (0.35, "centre"), "corner": (0.3, "corner")}
DEFAULT_WIDTH = 20  # the page's default pen
DEFAULT_SIZE = 0.7  # a digit that fills most of the pad: its 20-pixel box over the pad's side


@dataclass(frozen=True)
class Drawing:
    """One pad drawing of a digit: ``png`` (RGBA, ``PAD`` x ``PAD``) and how it was drawn."""

    png: bytes
    label: int
    width: int  # pen width in pad pixels
    rotation: float  # degrees, counter-clockwise
    size: float  # the side of the digit's 20-pixel MNIST box over the pad's side
    group: str  # which part of the corpus it belongs to, e.g. "width", "rotation", "size"


def digit_skeleton(digit: np.ndarray, side: float, rotation: float = 0.0) -> np.ndarray:
    """The centre line of a 28x28 digit's strokes, enlarged so its 20-pixel box spans ``side`` pixels.

    digit: uint8 ``(28, 28)``, bright ink on black -> bool ``(h, w)`` cropped to the skeleton.
    """
    scale = side / 20.0  # MNIST digits fill a 20x20 box
    up = Image.fromarray(np.asarray(digit, dtype=np.float32) / 255.0)
    n = max(28, round(28 * scale))
    up = up.resize((n, n), Image.Resampling.BILINEAR)
    if rotation:
        up = up.rotate(rotation, resample=Image.Resampling.BILINEAR, expand=True)
    skeleton = skeletonize(np.asarray(up) > 0.5)
    rows, cols = np.flatnonzero(skeleton.any(1)), np.flatnonzero(skeleton.any(0))
    if len(rows) == 0:
        raise ValueError("the digit has no stroke to draw")
    return skeleton[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def draw_on_pad(skeleton: np.ndarray, width: float, centre: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """Draw ``skeleton`` with a round pen ``width`` pixels wide, its box centred at ``centre`` (fractions of
    the pad), anti-aliased: uint8 ``(PAD, PAD, 4)`` RGBA, dark ink on opaque white, as the canvas sends it.

    The digit is moved as little as needed to keep the whole stroke on the pad.
    """
    h, w = skeleton.shape
    margin = width / 2 + 1
    top = np.clip(round(centre[1] * PAD - h / 2), np.ceil(margin), max(np.ceil(margin), PAD - h - margin))
    left = np.clip(round(centre[0] * PAD - w / 2), np.ceil(margin), max(np.ceil(margin), PAD - w - margin))
    line = np.zeros((PAD, PAD), dtype=bool)
    ys, xs = np.nonzero(skeleton)
    ys, xs = ys + int(top), xs + int(left)
    keep = (ys >= 0) & (ys < PAD) & (xs >= 0) & (xs < PAD)
    line[ys[keep], xs[keep]] = True
    distance = ndimage.distance_transform_edt(~line)
    alpha = np.clip(width / 2 + 0.5 - distance, 0.0, 1.0)  # one pixel of grey at the pen's edge
    rgba = np.empty((PAD, PAD, 4), dtype=np.uint8)
    rgba[..., :3] = np.rint(255 - alpha * (255 - INK)).astype(np.uint8)[..., None]
    rgba[..., 3] = 255
    return rgba


def to_png(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG")
    return buf.getvalue()


def draw_digit(digit: np.ndarray, width: float = DEFAULT_WIDTH, rotation: float = 0.0, size: float = DEFAULT_SIZE,
               centre: tuple[float, float] = (0.5, 0.5)) -> bytes:
    """A 28x28 digit as a pad drawing (PNG bytes): its skeleton, its 20-pixel box enlarged to ``size`` of
    the pad, drawn with a pen ``width`` pixels wide."""
    return to_png(draw_on_pad(digit_skeleton(digit, size * PAD, rotation), width, centre))


def _corner(rng: np.random.Generator, size: float) -> tuple[float, float]:
    """The centre of a digit ``size`` of the pad tall, pushed into a random corner."""
    near, far = size / 2 + 0.06, 1 - size / 2 - 0.06
    return (near if rng.random() < 0.5 else far), (near if rng.random() < 0.5 else far)


def _jitter(rng: np.random.Generator, size: float) -> tuple[float, float]:
    """A centre moved at random by up to a tenth of the pad, keeping a digit ``size`` tall on the pad."""
    room = max(0.0, min(0.1, (1 - size) / 2 - 0.05))
    return tuple(0.5 + rng.uniform(-room, room, 2))


def corpus(digits: np.ndarray, labels: np.ndarray, seed: int = 0, widths=WIDTHS, rotations=ROTATIONS,
           sizes=tuple(SIZES), mixed: int | None = None) -> list[Drawing]:
    """Pad drawings of ``digits`` (uint8 ``(n, 28, 28)``) with their ``labels`` ``(n,)``.

    Groups, each over every digit: ``width`` (each pen of ``widths``, upright, ``DEFAULT_SIZE``),
    ``rotation`` (each angle of ``rotations`` at the default pen), ``size`` (each of ``sizes``, see
    :data:`SIZES`, at the default pen), and ``mixed`` (``mixed`` drawings, default ``len(digits)``, each
    with a pen, angle, size and place drawn at random). Small random shifts come from ``seed``.
    """
    rng = np.random.default_rng(seed)
    out = []
    for digit, label in zip(digits, labels):
        label = int(label)
        for width in widths:
            out.append(Drawing(draw_digit(digit, width, 0.0, DEFAULT_SIZE, _jitter(rng, DEFAULT_SIZE)), label, width,
                               0.0, DEFAULT_SIZE, "width"))
        for angle in rotations:
            out.append(Drawing(draw_digit(digit, DEFAULT_WIDTH, angle, DEFAULT_SIZE, _jitter(rng, DEFAULT_SIZE)),
                               label, DEFAULT_WIDTH, float(angle), DEFAULT_SIZE, "rotation"))
        for name in sizes:
            size, where = SIZES[name]
            centre = _corner(rng, size) if where == "corner" else _jitter(rng, size)
            out.append(Drawing(draw_digit(digit, DEFAULT_WIDTH, 0.0, size, centre), label, DEFAULT_WIDTH, 0.0, size,
                               f"size:{name}"))
    n_mixed = len(digits) if mixed is None else mixed
    for i in range(n_mixed):
        j = i % len(digits)
        width = int(rng.integers(min(WIDTHS), max(WIDTHS) + 1))
        angle = float(rng.uniform(-20, 20))
        size = float(rng.uniform(0.3, 0.85))
        centre = tuple(rng.uniform(size / 2 + 0.05, 1 - size / 2 - 0.05, 2)) if size < 0.85 else (0.5, 0.5)
        out.append(Drawing(draw_digit(digits[j], width, angle, size, centre), int(labels[j]), width, angle, size,
                           "mixed"))
    return out


def mnist_test_digits(dataset, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` of MNIST's 10,000 test digits (never in a support set), chosen with ``seed``:
    uint8 ``(n, 28, 28)`` and labels ``(n,)``."""
    images, labels = dataset.images[60_000:, 0].numpy(), np.asarray(dataset.labels[60_000:])
    pick = np.random.default_rng(seed).choice(len(images), size=n, replace=False)
    return images[pick], labels[pick]
