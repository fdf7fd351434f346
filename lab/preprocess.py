"""One preprocessing for every image a user brings: MNIST-style 28x28, bright ink on dark.

Steps: first frame only, alpha flattened onto white paper, grayscale (16-bit and CMYK too),
polarity detected from the border and made bright-ink-on-dark, cropped to the ink, scaled
to fit 20x20 keeping the aspect ratio, and placed in 28x28 with its centre of mass at the
centre (LeCun et al.'s recipe for MNIST).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

MAX_PIXELS = 25_000_000  # refuse larger images before decoding them
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class BadImage(ValueError):
    """An input that cannot be used as an image; the message says why in one line."""


def open_image(data: bytes) -> Image.Image:
    """Open image bytes safely: size checked before decoding, decoded fully, first frame only."""
    if not data:
        raise BadImage("the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            if width * height > MAX_PIXELS:
                raise BadImage(f"the image is {width}x{height} pixels; the limit is {MAX_PIXELS:,} pixels")
            im.seek(0)
            im.load()
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImage(f"the image is too large to decode safely ({err})") from None
    except Exception as err:
        raise BadImage(f"not a readable image ({type(err).__name__}: {err})") from None
    return im


def to_gray(im: Image.Image) -> np.ndarray:
    """float32 grayscale in [0, 1], alpha flattened onto white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(paper, rgba)
    return np.asarray(ImageOps.grayscale(im.convert("RGB")), dtype=np.float32) / 255.0


def ink_image(gray: np.ndarray) -> np.ndarray:
    """Make the ink bright on a dark ground: invert when the border (the paper) is bright."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    ink = 1.0 - gray if np.median(border) > 0.5 else gray
    lo = np.percentile(ink, 5)
    ink = np.clip(ink - lo, 0, None)
    if ink.max() < 0.15:  # no contrast: a blank page
        return np.zeros_like(ink)
    return ink / ink.max()


def center_digit(ink: np.ndarray, box: int = 20, size: int = 28) -> np.ndarray:
    """Crop to the ink, fit into ``box`` x ``box`` keeping aspect, centre of mass at the centre of ``size``."""
    rows = np.flatnonzero(ink.max(1) > 0.2)
    cols = np.flatnonzero(ink.max(0) > 0.2)
    if len(rows) == 0:
        raise BadImage("the image is blank: draw something first")
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape
    scale = box / max(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray((crop * 255).astype(np.uint8)).resize(new, Image.Resampling.LANCZOS), dtype=np.float32)
    canvas = np.zeros((size, size), dtype=np.float32)
    total = small.sum()
    ys, xs = np.indices(small.shape)
    cy, cx = ((ys * small).sum() / total, (xs * small).sum() / total) if total > 0 else (new[1] / 2, new[0] / 2)
    top = int(round(size / 2 - cy))
    left = int(round(size / 2 - cx))
    top = min(max(top, 0), size - small.shape[0])
    left = min(max(left, 0), size - small.shape[1])
    canvas[top : top + small.shape[0], left : left + small.shape[1]] = small
    return canvas


def preprocess_image(im: Image.Image) -> np.ndarray:
    """Any PIL image -> uint8 ``(28, 28)``, bright ink centred on black, as MNIST."""
    canvas = center_digit(ink_image(to_gray(im)))
    return np.clip(canvas, 0, 255).astype(np.uint8)


def preprocess_bytes(data: bytes) -> np.ndarray:
    """Image file bytes -> uint8 ``(28, 28)``; raises :class:`BadImage` with a one-line reason."""
    return preprocess_image(open_image(data))
