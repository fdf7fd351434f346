"""One preprocessing for every image a user brings: MNIST-style 28x28, bright ink on dark.

Steps (LeCun et al.'s recipe for MNIST, made robust to what people upload):

1. open safely (:mod:`lab.image_files`): the file's size and pixel count capped before decoding, first
   frame only, EXIF orientation applied;
2. grayscale, whatever the mode (palette, CMYK, 16-bit, float); transparent pixels become paper of
   the colour that contrasts with the ink;
3. polarity detected from the border (the paper) and made bright-ink-on-dark; the paper's level
   subtracted (its local level when a photo is lit unevenly), faint shading dropped;
4. strokes made as thick as MNIST's, whatever the pen: the ink is binarised, thinned to its skeleton
   (its centre line, :func:`skimage.morphology.skeletonize`) and drawn again with a round pen whose width
   is :data:`STROKE_WIDTH` of the skeleton's size, with a pixel of grey at the edge;
5. cropped to the ink, scaled to fit 20x20 keeping the aspect ratio (which greys the edges as MNIST's
   are), and placed in 28x28 with its centre of mass at the centre.

Every failure raises :class:`BadImage` with a one-line reason; a blank page raises its
subclass :class:`BlankImage` ("draw something first").
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from lab.image_files import (MAX_UPLOAD_BYTES, WORK_SIDE, BadImage, BlankImage, open_image,  # noqa: F401
                             read_image_file, read_notes)

IMAGE_SIZE = 28
BOX = 20
STROKE_WIDTH = 0.157  # MNIST's median stroke width over its skeleton's longer side (tests/test_preprocess.py)
INK_LEVEL = 0.5  # what is thinned: pixels at least half as dark as the darkest stroke
MIN_MASK_SIDE = 96  # a smaller drawing is enlarged to this side before it is thinned
SPUR = 1.5  # twigs shorter than this many stroke half-widths that end in a corner are pruned
SKELETON_SIDE = 96  # the skeleton's longer side, in pixels, when it is drawn again


# --------------------------------------------------------------------------- pixels


def _shrink(a: np.ndarray, side: int = WORK_SIDE) -> np.ndarray:
    h, w = a.shape
    if max(h, w) <= side:
        return a
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(a.astype(np.float32)).resize(size, Image.Resampling.BOX), dtype=np.float32)


def to_gray(im: Image.Image) -> np.ndarray:
    """float32 grayscale ``(H, W)`` in [0, 1]; transparent pixels become paper that contrasts with the ink."""
    alpha = None
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
        im = rgba.convert("RGB")
    if im.mode.startswith(("I", "F")):  # 16-bit and 32-bit integer, float: stretch to [0, 1]
        a = np.nan_to_num(np.asarray(im, dtype=np.float64)).astype(np.float32)
        lo, hi = float(a.min()), float(a.max())
        gray = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    else:
        if im.mode not in ("L", "RGB"):
            im = im.convert("RGB")  # palette, CMYK, 1-bit, YCbCr ...
        gray = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    if alpha is not None:
        gray = _flatten_alpha(gray, alpha)
    return _shrink(gray)


def _flatten_alpha(gray: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Lay the visible pixels on paper: white under dark ink, black under light ink."""
    weight = alpha.sum()
    if weight < 1e-6:
        return np.zeros_like(gray)  # fully transparent: nothing drawn
    ink_level = float((gray * alpha).sum() / weight)
    paper = 0.0 if ink_level > 0.5 else 1.0
    return gray * alpha + paper * (1.0 - alpha)


def _otsu(a: np.ndarray, bins: int = 64) -> float:
    """Otsu's threshold of values in [0, 1]: the cut that best separates two groups."""
    hist, edges = np.histogram(a, bins=bins, range=(0.0, 1.0))
    p = hist / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    total = m0[-1]
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total * w0 - m0) ** 2 / (w0 * w1)
    between = np.nan_to_num(between[:-1])
    return float(edges[1:][np.argmax(between)]) if between.size else 0.5


def _paper(page: np.ndarray) -> np.ndarray | float:
    """The paper's brightness under each pixel of ``page`` (light paper, dark ink).

    Evenly lit paper is one level, the border's median. Under uneven light (the border's
    brightness varies), it is a grey closing at a coarse scale: the brightest cell within a
    window a fifth of the image wide, on a 32-pixel thumbnail, enlarged back smoothly.
    """
    border = np.concatenate([page[0], page[-1], page[:, 0], page[:, -1]])
    if np.percentile(border, 90) - np.percentile(border, 10) < 0.1:
        return float(np.median(border))
    h, w = page.shape
    scale = 32 / max(h, w)
    small = np.asarray(Image.fromarray(page).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                    Image.Resampling.BOX))
    padded = np.pad(small, 3, mode="edge")
    closed = np.lib.stride_tricks.sliding_window_view(padded, (7, 7)).max(axis=(-1, -2)).astype(np.float32)
    return np.asarray(Image.fromarray(closed).resize((w, h), Image.Resampling.BILINEAR))


def ink_image(gray: np.ndarray) -> np.ndarray:
    """Bright ink on a zero background in [0, 1]; raises :class:`BlankImage` when there is no ink.

    The border is taken as paper: when it is nearer the image's bright end than its dark end,
    the image is inverted. The paper's level (or, under uneven light, its local level) is
    subtracted. When faint pixels still far outnumber the ink, those below half Otsu's
    threshold are dropped; a clean drawing keeps its soft edges, as MNIST's digits have them.
    """
    lo, hi = float(gray.min()), float(gray.max())
    if hi - lo < 0.08:
        raise BlankImage("the image is blank: draw something first")
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    page = gray if np.median(border) >= (lo + hi) / 2 else 1.0 - gray  # light paper, dark ink
    ink = np.clip(_paper(page) - page, 0.0, None)
    top = float(ink.max())
    if top < 0.08:
        raise BlankImage("the image is blank: draw something first")
    ink /= top
    threshold = _otsu(ink[ink > 0.05]) if (ink > 0.05).any() else 0.5
    faint = np.count_nonzero((ink > 0.05) & (ink < threshold / 2))
    if faint > 3 * np.count_nonzero(ink >= threshold):  # shading, not anti-aliasing
        floor = threshold / 2
        ink = np.clip((ink - floor) / (1.0 - floor), 0.0, 1.0)
    return ink


def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float ``a`` resized to ``size`` (width, height): averaged when shrinking, interpolated when enlarging."""
    shrink = size[0] < a.shape[1] or size[1] < a.shape[0]
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(a.astype(np.float32)).resize(size, method))


def _drop_small(mask: np.ndarray, min_size: int, diagonal: bool = True) -> np.ndarray:
    """``mask`` without its connected parts of fewer than ``min_size`` pixels (8-neighbours, or 4 when not
    ``diagonal``: the paper around ink that touches corner to corner stays apart)."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3)) if diagonal else None)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    keep[1 + np.argmax(sizes[1:])] = True  # the largest part always stays
    return keep[labels]


def _ink_mask(ink: np.ndarray) -> np.ndarray:
    """The ink as a mask cropped to it, at least :data:`MIN_MASK_SIDE` pixels on its longer side: specks
    under 1% of the ink dropped, pinholes of a few pixels filled, every other hole kept (a thick pen
    leaves only a small hole in a loop, and the loop is what tells an 8 from a 1)."""
    mask = ink >= INK_LEVEL
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        raise BlankImage("the image is blank: draw something first")
    mask = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = mask.shape
    if max(h, w) < MIN_MASK_SIDE:  # a small drawing: enlarged, so its skeleton is smooth enough to scale
        scale = MIN_MASK_SIDE / max(h, w)
        mask = _resize(mask, (max(1, round(w * scale)), max(1, round(h * scale)))) >= 0.5
    mask = _drop_small(mask, max(1, int(mask.sum()) // 100))
    pinhole = max(2, round((max(mask.shape) / 140) ** 2))
    paper = _drop_small(np.pad(~mask, 1, constant_values=True), pinhole + 1, diagonal=False)[1:-1, 1:-1]
    return ~paper


_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def _prune_spurs(skeleton: np.ndarray, mask: np.ndarray, factor: float | None = None) -> np.ndarray:
    """``skeleton`` without its spurs: the short twigs thinning leaves where a thick stroke ends square or
    turns a corner. A branch from an end to a junction is a spur when it is shorter than ``factor`` times
    the stroke's half-width at the junction (its distance to the paper) and it ends in a corner (under
    half that width from the paper); a stroke's own round end sits a half-width from the paper."""
    from scipy import ndimage

    factor = SPUR if factor is None else factor
    skeleton = skeleton.copy()
    count = ndimage.convolve(skeleton.astype(np.uint8), np.ones((3, 3), np.uint8), mode="constant") - 1
    ends = np.argwhere(skeleton & (count == 1))
    if len(ends) == 0:
        return skeleton
    radius = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    limit = factor * float(radius.max())
    h, w = skeleton.shape
    for y, x in ends:
        path, seen = [(int(y), int(x))], {(int(y), int(x))}
        while len(path) <= limit:
            cy, cx = path[-1]
            if len(path) > 1 and count[cy, cx] >= 3:  # a junction: the branch ends here
                if len(path) - 1 < factor * radius[cy, cx] and radius[y, x] < 0.5 * radius[cy, cx]:
                    for py, px in path[:-1]:
                        skeleton[py, px] = False
                break
            step = [(cy + dy, cx + dx) for dy, dx in _NEIGHBOURS if 0 <= cy + dy < h and 0 <= cx + dx < w
                    and skeleton[cy + dy, cx + dx] and (cy + dy, cx + dx) not in seen]
            if not step:
                break  # another end: a stroke of its own, not a spur
            path.append(step[0])
            seen.update(step)
    return skeleton


def normalise_strokes(ink: np.ndarray) -> np.ndarray:
    """The same drawing with strokes as thick as MNIST's, whatever pen drew it.

    ``ink``: float ``(H, W)`` in [0, 1], bright on zero -> float ``(h, w)`` in [0, 1]: the skeleton of the
    ink, scaled so its longer side is :data:`SKELETON_SIDE` pixels, drawn with a round pen
    :data:`STROKE_WIDTH` of that side wide, anti-aliased. A thin and a thick pen give nearly the same
    image (tests/test_preprocess.py checks widths 6 to 40).
    """
    from scipy import ndimage
    from skimage.morphology import skeletonize

    mask = _ink_mask(ink)
    ys, xs = np.nonzero(_prune_spurs(skeletonize(mask), mask))
    if len(ys) == 0:
        raise BlankImage("the image is blank: draw something first")
    ys, xs = ys - ys.min(), xs - xs.min()
    side = max(int(ys.max()), int(xs.max()), max(mask.shape) // 4, 1)  # a dot or a blob keeps a visible size
    scale = SKELETON_SIDE / side
    width = STROKE_WIDTH * SKELETON_SIDE
    margin = int(np.ceil(width / 2)) + 2
    line = np.zeros((round(ys.max() * scale) + 2 * margin + 1, round(xs.max() * scale) + 2 * margin + 1), dtype=bool)
    line[np.rint(ys * scale).astype(int) + margin, np.rint(xs * scale).astype(int) + margin] = True
    distance = ndimage.distance_transform_edt(~line)
    return np.clip(width / 2 + 0.5 - distance, 0.0, 1.0).astype(np.float32)


def center_digit(ink: np.ndarray, box: int = BOX, size: int = IMAGE_SIZE) -> np.ndarray:
    """Crop to the ink, fit into ``box`` x ``box`` keeping aspect, centre of mass at the centre.

    ``ink``: float ``(H, W)`` in [0, 1], bright on zero -> float ``(size, size)`` in [0, 255].
    """
    rows = np.flatnonzero(ink.max(1) > 0.05)
    cols = np.flatnonzero(ink.max(0) > 0.05)
    if len(rows) == 0:
        raise BlankImage("the image is blank: draw something first")
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape
    scale = box / max(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(crop.astype(np.float32)).resize(new, Image.Resampling.LANCZOS))
    small = np.clip(small, 0.0, None)
    if small.max() <= 0:
        raise BlankImage("the image is blank: draw something first")
    small = small * (255.0 / small.max())  # thin strokes keep full brightness, as in MNIST
    ys, xs = np.indices(small.shape)
    total = small.sum()
    cy, cx = (ys * small).sum() / total, (xs * small).sum() / total
    top = min(max(int(round(size / 2 - cy)), 0), size - small.shape[0])
    left = min(max(int(round(size / 2 - cx)), 0), size - small.shape[1])
    canvas = np.zeros((size, size), dtype=np.float32)
    canvas[top : top + small.shape[0], left : left + small.shape[1]] = small
    return canvas


# --------------------------------------------------------------------------- entry points


def preprocess_image(im: Image.Image) -> np.ndarray:
    """Any PIL image -> uint8 ``(28, 28)``, bright ink centred on black, as MNIST."""
    try:
        canvas = center_digit(normalise_strokes(ink_image(to_gray(im))))
    except BadImage:
        raise
    except Exception as err:  # an exotic mode or a degenerate image: still one clear line
        raise BadImage(f"the image cannot be converted ({type(err).__name__}: {err})") from None
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def normalise_digit(image: np.ndarray) -> np.ndarray:
    """A uint8 ``(28, 28)`` digit such as MNIST's -> the uint8 ``(28, 28)`` image a drawing of it becomes:
    its strokes drawn again as thick as :func:`normalise_strokes` draws every drawing's."""
    ink = np.asarray(image, dtype=np.float32) / 255.0
    return np.clip(np.rint(center_digit(normalise_strokes(ink / max(float(ink.max()), 1e-6)))), 0, 255).astype(np.uint8)


def prepare_bytes(data: bytes) -> tuple[np.ndarray, tuple[str, ...]]:
    """Image file bytes -> (uint8 ``(28, 28)``, notes on how the file was read: :func:`read_notes`)."""
    im = open_image(data)
    return preprocess_image(im), read_notes(im)


def preprocess_bytes(data: bytes) -> np.ndarray:
    """Image file bytes -> uint8 ``(28, 28)``; raises :class:`BadImage` with a one-line reason."""
    return prepare_bytes(data)[0]


def preprocess_file(path: str | os.PathLike) -> np.ndarray:
    """An image file -> uint8 ``(28, 28)``; raises :class:`BadImage` (or ``OSError`` when unreadable)."""
    return preprocess_bytes(read_image_file(path))


def to_png(image: np.ndarray, scale: int = 1, invert: bool = False) -> bytes:
    """A uint8 grayscale array as PNG bytes, enlarged ``scale`` times with square pixels."""
    a = np.asarray(image, dtype=np.uint8)
    if invert:
        a = 255 - a
    if scale > 1:
        a = np.kron(a, np.ones((scale, scale), dtype=np.uint8))
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()
