"""Opening image files safely: at most :data:`MAX_UPLOAD_BYTES`, only PNG/JPEG/BMP/GIF/WebP, the size read
from the header and refused above :data:`MAX_PIXELS` before decoding (Pillow's bomb guard stays on), first
frame only, EXIF orientation applied. Every failure raises :class:`BadImage` with a one-line reason."""

from __future__ import annotations

import io
import os
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

MAX_UPLOAD_BYTES = 5 * 2**20  # the largest image file read; the server lets bigger ones through to be told so
MAX_PIXELS = 25_000_000  # larger images are refused before decoding
FRAMES_KEY = "lab.frames"  # where open_image notes the file's frame count
MIN_SIDE = 8  # narrower or shorter images are refused: too few pixels to hold a digit
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")  # Pillow's other formats are never tried
WORK_SIDE = 512  # bigger images are shrunk to this side first: a digit needs no more


class BadImage(ValueError):
    """An input that cannot be used as an image; the message says why in one line."""


class BlankImage(BadImage):
    """An image with no ink on it: an empty canvas or a blank page."""


def open_image(data: bytes) -> Image.Image:
    """Open image bytes safely: size capped, pixel count checked before decoding, first frame only."""
    if not data:
        raise BadImage("the file is empty (0 bytes)")
    if len(data) > MAX_UPLOAD_BYTES:
        raise BadImage(f"the file is {len(data) / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = im.size
            if width * height > MAX_PIXELS:
                raise BadImage(f"the image is {width}x{height} pixels; the limit is {MAX_PIXELS:,} pixels")
            if width < 1 or height < 1:
                raise BadImage(f"the image has no pixels ({width}x{height})")
            if width < MIN_SIDE or height < MIN_SIDE:
                raise BadImage(f"the image is too small ({width}x{height} pixels): it needs at least "
                               f"{MIN_SIDE}x{MIN_SIDE}")
            frames = int(getattr(im, "n_frames", 1) or 1)
            im.seek(0)
            if im.format == "JPEG":
                im.draft(None, (WORK_SIDE, WORK_SIDE))  # decode a big photo at a reduced scale
            im.load()
            im.info[FRAMES_KEY] = frames  # kept by the copies Pillow makes
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(f"the image is too large: over {MAX_PIXELS:,} pixels (refused before decoding)") from None
    except UnidentifiedImageError:
        raise BadImage("not an image: expected a PNG, JPEG, BMP, GIF or WebP file") from None
    except Exception as err:  # truncated or corrupt data: Pillow raises OSError, SyntaxError, ValueError...
        raise BadImage(f"the image file is damaged or truncated ({type(err).__name__}: {err})") from None
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # an unreadable EXIF block: keep the pixels as they are
        return im


def read_image_file(path: str | os.PathLike) -> bytes:
    """The bytes of an image file, refusing one over the upload cap without reading it."""
    size = os.path.getsize(path)
    if size > MAX_UPLOAD_BYTES:
        raise BadImage(f"the file is {size / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB")
    with open(path, "rb") as f:
        return f.read()


def frame_count(im: Image.Image) -> int:
    """How many frames the file :func:`open_image` opened holds (an animated GIF or WebP has several)."""
    return int(im.info.get(FRAMES_KEY) or getattr(im, "n_frames", 1) or 1)


def read_notes(im: Image.Image) -> tuple[str, ...]:
    """What a user should know about how the file was read, one line each."""
    frames = frame_count(im)
    return (f"the file holds {frames} frames: only the first was used",) if frames > 1 else ()
