"""The drawing corpus: MNIST test digits drawn again on a pad-like image with pens of every width, turned,
shrunk and moved, the same for the same seed."""

import io

import numpy as np
import pytest
from PIL import Image

from lab.drawings import PAD, WIDTHS, corpus, digit_skeleton, draw_digit, mnist_test_digits


def rgba(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture(scope="module")
def few(mnist):
    return mnist_test_digits(mnist, 4, seed=0)


def test_the_same_seed_gives_the_same_corpus_and_another_seed_another(few):
    digits, labels = few
    a, b, c = corpus(digits, labels, seed=3), corpus(digits, labels, seed=3), corpus(digits, labels, seed=4)
    assert [d.png for d in a] == [d.png for d in b]
    assert [d.png for d in a] != [d.png for d in c]
    assert [(d.label, d.width, d.rotation, d.group) for d in a] == [(d.label, d.width, d.rotation, d.group) for d in b]


def test_the_corpus_covers_every_pen_rotation_and_size_for_every_digit(few):
    digits, labels = few
    drawings = corpus(digits, labels, seed=0)
    widths = {d.width for d in drawings if d.group == "width"}
    assert widths == set(WIDTHS) and min(widths) == 4 and max(widths) == 40
    assert {d.rotation for d in drawings if d.group == "rotation"} == {-20.0, -10.0, 0.0, 10.0, 20.0}
    assert {d.group for d in drawings} >= {"size:large", "size:small", "size:corner", "mixed"}
    mixed = [d for d in drawings if d.group == "mixed"]
    assert len(mixed) == len(digits) and all(abs(d.rotation) <= 20 and 4 <= d.width <= 40 for d in mixed)


def test_a_drawing_is_what_the_pad_sends_dark_ink_on_opaque_white(few):
    image = rgba(draw_digit(few[0][0], 20))
    assert image.shape == (PAD, PAD, 4) and image.dtype == np.uint8
    assert (image[..., 3] == 255).all()
    assert image[..., 0].min() == 17 and image[0, 0, 0] == 255  # the pad's #111111 pen on white


@pytest.mark.parametrize("pen", [4, 10, 40])
def test_the_pen_draws_strokes_as_wide_as_it_is(few, pen):
    from scipy import ndimage
    from skimage.morphology import skeletonize

    ink = rgba(draw_digit(few[0][1], pen))[..., 0] < 136
    width = 2 * np.median(ndimage.distance_transform_edt(ink)[skeletonize(ink)])  # twice the centre's depth
    assert width == pytest.approx(pen, rel=0.2)


def test_a_digit_scaled_into_a_corner_stays_whole_on_the_pad(few):
    full = rgba(draw_digit(few[0][2], 20, size=0.7))[..., 0] < 136
    corner = rgba(draw_digit(few[0][2], 20, size=0.3, centre=(0.05, 0.95)))[..., 0] < 136
    rows, cols = np.flatnonzero(corner.any(1)), np.flatnonzero(corner.any(0))
    assert cols[0] >= 1 and rows[-1] <= PAD - 2  # pushed into the corner, nothing cut off
    assert cols[0] < 10 and rows[-1] > PAD - 10
    assert corner.sum() < full.sum() / 2


def test_a_turned_digits_skeleton_is_the_upright_one_turned(few):
    upright = digit_skeleton(few[0][3], 200)
    turned = digit_skeleton(few[0][3], 200, rotation=90)
    assert turned.shape == pytest.approx(upright.shape[::-1], abs=4)
