"""Preprocessing: real MNIST digits round-trip, odd but valid images agree, and every bad input in the
corpus (generated here in a temporary folder) gets one clear line."""

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from skimage.morphology import skeletonize

from lab.drawings import draw_digit
from lab.preprocess import (
    MAX_UPLOAD_BYTES, STROKE_WIDTH, BadImage, BlankImage, normalise_digit, prepare_bytes, preprocess_bytes,
    preprocess_file,
)

ROUND_TRIP_DIGITS = 200


def png(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kw)
    return buf.getvalue()


def encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def re_render(digit: np.ndarray, side: int, dark_on_light: bool) -> bytes:
    """An MNIST digit enlarged to ``side`` pixels, optionally as dark ink on light paper, off-centre on a
    bigger page."""
    big = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BILINEAR))
    page = np.pad(big, ((side // 5, side // 3), (side // 2, side // 7)))
    return png(Image.fromarray(255 - page if dark_on_light else page))


def shift_tolerant_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Best correlation of ``a`` with ``b`` shifted by at most one pixel each way (centring rounds)."""
    a = a.astype(float).ravel()
    return max(np.corrcoef(a, np.roll(b.astype(float), (dy, dx), (0, 1)).ravel())[0, 1]
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def mnist_test_digits(mnist, n: int, seed: int = 0):
    test_x, test_y = mnist.images[60_000:, 0].numpy(), mnist.labels[60_000:]
    pick = np.random.default_rng(seed).choice(len(test_x), size=n, replace=False)
    return test_x[pick], test_y[pick]


@pytest.mark.parametrize("side, dark_on_light", [(56, False), (140, True), (300, True)])
def test_an_mnist_test_digit_re_rendered_at_another_size_and_polarity_comes_back_as_its_own_redrawing(mnist, side,
                                                                                                    dark_on_light):
    digits, _ = mnist_test_digits(mnist, ROUND_TRIP_DIGITS)
    scores = [shift_tolerant_correlation(normalise_digit(d), preprocess_bytes(re_render(d, side, dark_on_light)))
              for d in digits]
    assert np.median(scores) > 0.94
    assert np.percentile(scores, 5) > 0.85  # strokes that nearly touch may join at one size and not another


def test_redrawing_an_mnist_digit_keeps_its_shape(mnist):
    digits, _ = mnist_test_digits(mnist, ROUND_TRIP_DIGITS)
    scores = [shift_tolerant_correlation(d, normalise_digit(d)) for d in digits]
    assert np.median(scores) > 0.85
    assert np.percentile(scores, 5) > 0.7


# --------------------------------------------------------------------------- any pen, any size


def stroke_width(image: np.ndarray) -> float:
    """Mean stroke width of a 28x28 digit in pixels: its ink area over the length of its skeleton, both
    measured four times enlarged."""
    big = np.asarray(Image.fromarray(image.astype(np.float32) / 255).resize((112, 112), Image.Resampling.BILINEAR))
    ink = big > 0.5
    return ink.sum() / skeletonize(ink).sum() / 4


def test_the_stroke_width_constant_is_mnists_median_stroke_over_the_skeletons_size(mnist):
    images = mnist.images[np.random.default_rng(0).choice(60_000, 300, replace=False), 0].numpy()
    ratios = []
    for image in images:
        big = np.asarray(Image.fromarray(image.astype(np.float32) / 255).resize((112, 112), Image.Resampling.BILINEAR))
        ink = big > 0.5
        skeleton = skeletonize(ink)
        rows, cols = np.flatnonzero(skeleton.any(1)), np.flatnonzero(skeleton.any(0))
        ratios.append(ink.sum() / skeleton.sum() / max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))
    assert abs(np.median(ratios) - STROKE_WIDTH) < 0.01


@pytest.mark.parametrize("pen", [4, 6, 20, 40])
def test_a_drawing_comes_out_with_mnists_stroke_width_whatever_the_pen(mnist, pen):
    digits, _ = mnist_test_digits(mnist, 60, seed=2)
    mnist_width = np.median([stroke_width(d) for d in mnist.images[:300, 0].numpy()])
    widths = [stroke_width(preprocess_bytes(draw_digit(d, pen))) for d in digits]
    assert abs(np.median(widths) / mnist_width - 1) < 0.15


def test_one_digit_drawn_with_a_6_and_a_40_pixel_pen_gives_nearly_the_same_image(mnist):
    digits, _ = mnist_test_digits(mnist, 100, seed=5)
    scores = [shift_tolerant_correlation(preprocess_bytes(draw_digit(d, 6)), preprocess_bytes(draw_digit(d, 40)))
              for d in digits]
    assert np.median(scores) > 0.95
    assert np.percentile(scores, 10) > 0.85


def test_a_small_digit_in_a_corner_gives_nearly_the_image_of_the_same_digit_filling_the_pad(mnist):
    digits, _ = mnist_test_digits(mnist, 100, seed=6)
    scores = [shift_tolerant_correlation(preprocess_bytes(draw_digit(d, 12, size=0.8)),
                                         preprocess_bytes(draw_digit(d, 12, size=0.3, centre=(0.2, 0.8))))
              for d in digits]
    assert np.median(scores) > 0.9


def test_a_thick_marker_photo_of_a_digit_still_reads_as_that_digit():
    thin, thick = Image.new("L", (400, 400), 255), Image.new("L", (400, 400), 255)
    for im, width in ((thin, 12), (thick, 70)):
        ImageDraw.Draw(im).line([(90, 80), (310, 80), (170, 340)], fill=30, width=width, joint="curve")
    a, b = (preprocess_bytes(encoded(im.convert("RGB"), "JPEG")) for im in (thin, thick))
    assert shift_tolerant_correlation(a, b) > 0.9


def test_preprocessing_one_pad_drawing_takes_a_few_milliseconds(mnist):
    digits, _ = mnist_test_digits(mnist, 20, seed=3)
    drawings = [draw_digit(d, 20) for d in digits]
    preprocess_bytes(drawings[0])  # imports and warms up
    t0 = time.perf_counter()
    for data in drawings:
        preprocess_bytes(data)
    assert (time.perf_counter() - t0) / len(drawings) < 0.04


def test_the_shipped_model_still_recognises_re_rendered_mnist_digits(mnist):
    from lab.predict import Predictor, digit_support, load_digit_bank, load_model

    _, model = load_model("default")
    predictor = Predictor(model)
    support = digit_support(load_digit_bank("mnist"), k_shot=5, seed=0)
    digits, labels = mnist_test_digits(mnist, ROUND_TRIP_DIGITS, seed=1)
    original = predictor.probabilities(digits, support).argmax(1)
    redrawn = np.stack([preprocess_bytes(re_render(d, 140, True)) for d in digits])
    again = predictor.probabilities(redrawn, support).argmax(1)
    assert (again == original).mean() >= 0.85
    assert (again == labels).mean() >= (original == labels).mean() - 0.05
    assert (again == labels).mean() >= 0.7


# --------------------------------------------------------------------------- odd but valid images


def drawn_digit(size: int = 120) -> Image.Image:
    """A '7' in black ink on white paper."""
    im = Image.new("L", (size, size), 255)
    d = ImageDraw.Draw(im)
    d.line([(30, 25), (90, 25), (55, 100)], fill=0, width=9)
    d.line([(40, 62), (80, 62)], fill=0, width=7)
    return im


def on_transparent(ink: int) -> bytes:
    """The digit in ``ink`` grey on a fully transparent page, as a drawing pad gives it."""
    alpha = 255 - np.asarray(drawn_digit())
    rgba = np.zeros((*alpha.shape, 4), dtype=np.uint8)
    rgba[..., :3], rgba[..., 3] = ink, alpha
    return png(Image.fromarray(rgba))


def exif_rotated_jpeg() -> bytes:
    """The digit stored on its side, with an EXIF orientation tag that says to turn it upright."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return encoded(drawn_digit().convert("RGB").transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif, quality=95)


def shaded_photo() -> bytes:
    """The digit photographed on a page lit unevenly (bright to dim across), with sensor noise."""
    page = np.asarray(drawn_digit(400), dtype=float) / 255
    light = np.linspace(1.0, 0.55, 400)[None, :] * np.linspace(1.0, 0.8, 400)[:, None]
    noisy = page * light * 0.95 + 0.03 + np.random.default_rng(0).normal(0, 0.015, page.shape)
    return encoded(Image.fromarray((np.clip(noisy, 0, 1) * 255).astype(np.uint8)).convert("RGB"), "JPEG", quality=85)


def animated_gif() -> bytes:
    first = drawn_digit().convert("P")
    second = Image.new("L", (120, 120), 255)
    ImageDraw.Draw(second).ellipse((20, 20, 100, 100), outline=0, width=9)
    return encoded(first, "GIF", save_all=True, append_images=[second.convert("P")], duration=200, loop=0)


VALID = {
    "cmyk.jpg": lambda: encoded(drawn_digit().convert("CMYK"), "JPEG", quality=95),
    "16-bit.png": lambda: png(Image.fromarray(np.asarray(drawn_digit()).astype(np.uint16) * 257)),
    "alpha-dark-ink.png": lambda: on_transparent(0),
    "alpha-light-ink.png": lambda: on_transparent(255),
    "animated.gif": animated_gif,
    "light-on-dark.bmp": lambda: encoded(Image.fromarray(255 - np.asarray(drawn_digit())), "BMP"),
    "photo.webp": lambda: encoded(drawn_digit().convert("RGB"), "WEBP", quality=90),
    "exif-rotated.jpg": exif_rotated_jpeg,
    "big-page.png": lambda: png(drawn_digit().resize((2400, 2400))),
    "shaded-photo.jpg": shaded_photo,
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_odd_but_valid_images_preprocess_like_the_plain_png(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(VALID[name]())
    plain = preprocess_bytes(png(drawn_digit()))
    out = preprocess_file(path)
    assert out.shape == (28, 28) and out.dtype == np.uint8 and out.max() == 255
    assert shift_tolerant_correlation(plain, out) > 0.9, name


def test_an_animated_gif_is_read_from_its_first_frame_and_says_so():
    circle = Image.new("L", (120, 120), 255)
    ImageDraw.Draw(circle).ellipse((20, 20, 100, 100), outline=0, width=9)
    out, notes = prepare_bytes(animated_gif())
    assert shift_tolerant_correlation(preprocess_bytes(png(drawn_digit())), out) > 0.9
    assert shift_tolerant_correlation(preprocess_bytes(png(circle)), out) < 0.5
    assert notes == ("the file holds 2 frames: only the first was used",)
    assert prepare_bytes(png(drawn_digit()))[1] == ()


def test_the_digit_lands_in_a_20_pixel_box_with_its_centre_of_mass_at_the_centre():
    out = preprocess_bytes(png(drawn_digit(300))).astype(float)
    rows, cols = np.flatnonzero(out.max(1) > 0), np.flatnonzero(out.max(0) > 0)
    assert max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) == 20
    ys, xs = np.indices(out.shape)
    assert abs((ys * out).sum() / out.sum() - 14) <= 0.5 and abs((xs * out).sum() / out.sum() - 14) <= 0.5


# --------------------------------------------------------------------------- the bad-input corpus


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` pixels, with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = _chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + pixels + _chunk(b"IEND", b"")


def over_the_cap() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (1400, 1400, 3), dtype=np.uint8)
    data = png(Image.fromarray(noise))
    assert len(data) > MAX_UPLOAD_BYTES
    return data


BAD = {
    "zero-byte.png": (lambda: b"", BadImage, "empty"),
    "truncated.png": (lambda: png(drawn_digit())[:150], BadImage, "truncated"),
    "text-renamed.png": (lambda: b"this is a shopping list, not a picture\n" * 20, BadImage, "not an image"),
    "20000x20000.png": (lambda: png_header_only(20_000, 20_000), BadImage, "refused before decoding"),
    "6000x6000.png": (lambda: png_header_only(6000, 6000), BadImage, "6000x6000 pixels"),
    "over-5-MB.png": (over_the_cap, BadImage, "the limit is 5 MB"),
    "1x1.png": (lambda: png(Image.new("RGB", (1, 1), "black")), BadImage, "the image is too small (1x1 pixels)"),
    "3x200.png": (lambda: png(Image.new("L", (3, 200), 0)), BadImage, "too small"),
    "blank-canvas.png": (lambda: png(Image.new("RGBA", (280, 280), (0, 0, 0, 0))), BlankImage, "draw something first"),
    "blank-white-page.jpg": (lambda: encoded(Image.new("RGB", (280, 280), "white"), "JPEG"), BlankImage,
                             "draw something first"),
    "empty-svg.png": (lambda: b"<svg xmlns='http://www.w3.org/2000/svg'/>", BadImage, "not an image"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_every_bad_input_raises_one_clear_line(tmp_path, name):
    make, error, message = BAD[name]
    path = tmp_path / name
    path.write_bytes(make())
    t0 = time.perf_counter()
    with pytest.raises(error) as caught:
        preprocess_file(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert time.perf_counter() - t0 < 2.0  # refused, not decoded


def test_a_file_over_the_cap_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "huge.png"
    with open(path, "wb") as f:
        f.truncate(MAX_UPLOAD_BYTES + 1)  # sparse: nothing to read
    with pytest.raises(BadImage, match="limit is 5 MB"):
        preprocess_file(path)
