"""The Draw & Predict page under AppTest: uploads, bad input, the support set, and teach mode end to end.
(The drawing pad itself is driven in the browser tests.)"""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from streamlit.testing.v1 import AppTest

from lab.taught import TaughtSet
from lab.preprocess import preprocess_bytes

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "views" / "draw.py")


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def zero() -> bytes:
    im = Image.new("RGB", (200, 200), "white")
    ImageDraw.Draw(im).ellipse((55, 25, 145, 175), outline="black", width=14)
    return png(im)


def page(**state) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def top_class(at: AppTest) -> str | None:
    for m in at.markdown:
        if "dp-top" in m.value:
            return m.value.split(">")[1].split("<")[0]
    return None


def upload(at: AppTest, key: str, name: str, data: bytes) -> AppTest:
    at.radio(key=f"{key}-how").set_value("Upload").run()
    at.file_uploader(key=f"{key}-upload").set_value((name, data, "image/png"))
    return at.run()


def test_the_page_opens_in_digits_mode_with_a_blank_pad_and_shows_the_support_set():
    at = page()
    assert not at.exception and at.title[0].value == "Draw & Predict"
    assert any("Draw something first" in i.value for i in at.info)
    assert top_class(at) is None
    assert any("5 example(s) of each digit" in c.value for c in at.caption)
    assert len(at.image) >= 1  # the support montage


def test_an_uploaded_digit_is_predicted_with_probability_bars_and_timings():
    at = upload(page(), "digit", "zero.png", zero())
    assert not at.exception and not at.error
    assert top_class(at) == "0"
    assert len(at.get("plotly_chart")) == 1
    assert any("preprocess" in c.value and "ms" in c.value for c in at.caption)


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("zero-byte.png", b"", "empty"),
        ("text.png", b"just some text\n" * 10, "not an image"),
        ("big.png", b"\x89PNG" + bytes(5 * 2**20 + 10), "limit is 5 MB"),
    ],
    ids=["zero-byte", "text-renamed", "over-the-cap"],
)
def test_a_bad_upload_shows_a_clear_error_and_the_page_keeps_running(name, data, message):
    at = upload(page(), "digit", name, data)
    assert not at.exception
    assert any(message in e.value for e in at.error)
    assert top_class(at) is None
    at.file_uploader(key="digit-upload").set_value(("zero.png", zero(), "image/png"))
    assert top_class(at.run()) == "0"  # and it still predicts afterwards


def noisy_photo() -> bytes:
    rng = np.random.default_rng(0)
    im = Image.new("RGB", (400, 300), (180, 150, 120))
    d = ImageDraw.Draw(im)
    for _ in range(12):
        x, y, r = rng.uniform(0, 400), rng.uniform(0, 300), rng.uniform(10, 80)
        d.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    noisy = np.asarray(im) / 255 + rng.normal(0, 0.1, (300, 400, 3))
    return png(Image.fromarray((np.clip(noisy, 0, 1) * 255).astype(np.uint8)))


def animated_zero() -> bytes:
    frames = [Image.open(io.BytesIO(zero())).convert("P"), Image.new("P", (200, 200), 255)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    return buf.getvalue()


def test_a_noisy_photo_is_shown_as_not_sure_with_the_reason():
    at = upload(page(), "digit", "photo.png", noisy_photo())
    assert not at.exception and not at.error
    assert any("dp-unsure" in m.value and "Not sure" in m.value for m in at.markdown)
    assert any("a best guess, not an answer" in m.value and "far from every class" in m.value for m in at.markdown)


def test_a_clean_digit_is_shown_sure_without_the_doubt_state():
    at = upload(page(), "digit", "zero.png", zero())
    assert top_class(at) == "0" and not any("dp-unsure" in m.value for m in at.markdown)
    assert any("sure · prediction" in m.value for m in at.markdown)


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("dot.png", png(Image.new("RGB", (1, 1), "black")), "the image is too small (1x1 pixels)"),
        ("white.png", png(Image.new("RGB", (200, 200), "white")), "That image is blank"),
    ],
    ids=["one-pixel", "blank-upload"],
)
def test_an_upload_that_holds_no_digit_says_what_is_wrong_not_that_the_pad_is_blank(name, data, message):
    at = upload(page(), "digit", name, data)
    assert not at.exception and any(message in e.value for e in at.error)
    assert not any("pad is blank" in i.value for i in at.info) and top_class(at) is None


def test_a_refused_file_clears_the_prediction_of_the_one_before():
    at = upload(page(), "digit", "zero.png", zero())
    assert top_class(at) == "0"
    at.file_uploader(key="digit-upload").set_value(("big.png", b"\x89PNG" + bytes(5 * 2**20 + 10), "image/png"))
    at.run()
    assert any("limit is 5 MB" in e.value for e in at.error) and top_class(at) is None
    assert not at.get("plotly_chart")


def test_an_animated_gif_is_predicted_from_its_first_frame_and_the_page_says_so():
    at = upload(page(), "digit", "zero.gif", animated_zero())
    assert top_class(at) == "0"
    assert any("only the first was used" in i.value for i in at.info)


def test_k_and_resampling_change_the_support_set():
    at = page()
    at.slider[0].set_value(1).run()
    assert any("1 example(s) of each digit" in c.value and "seed 0" in c.value for c in at.caption)
    next(b for b in at.button if b.label == "Resample").click().run()
    assert any("seed 1" in c.value for c in at.caption)


def _circle_cross(kind: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    im = Image.new("L", (200, 200), 255)
    d = ImageDraw.Draw(im)
    x0, y0 = rng.integers(15, 45, 2)
    x1, y1 = 200 - rng.integers(15, 45, 2)
    if kind == "circle":
        d.ellipse((x0, y0, x1, y1), outline=0, width=12)
    else:
        d.line((x0, y0, x1, y1), fill=0, width=12)
        d.line((x0, y1, x1, y0), fill=0, width=12)
    return png(im)


def test_teach_mode_adds_and_removes_examples_from_uploads():
    at = page()
    at.sidebar.radio[0].set_value("Teach").run()
    assert any("Not ready to adapt" in i.value for i in at.info)
    at = upload(at, "teach", "circle.png", _circle_cross("circle", 0))
    at.button(key="teach-add").click().run()
    assert not at.exception and any("circle" in m.value and "1/5" in m.value for m in at.markdown)
    at.button(key="teach-rm-0-0").click().run()
    assert any("circle" in m.value and "0/5" in m.value for m in at.markdown)


def test_teach_mode_loads_a_taught_set_adapts_and_names_a_new_drawing():
    taught = TaughtSet(("ring", "ex"), tuple(tuple(preprocess_bytes(_circle_cross(k, s)) for s in range(3))
                                             for k in ("circle", "cross")))
    at = page()
    at.sidebar.radio[0].set_value("Teach").run()
    at.file_uploader(key="teach-file").set_value(("taught.json", taught.to_bytes(), "application/json")).run()
    assert not at.exception and at.text_input(key="teach-name-0").value == "ring"
    assert any("ring" in m.value and "3/5" in m.value for m in at.markdown)
    assert any("Press Adapt" in i.value for i in at.info)
    at.button(key="teach-adapt").click().run()
    assert any("Adapted to 2 symbols from 6 drawings" in s.value for s in at.success)
    for kind, name in (("cross", "ex"), ("circle", "ring")):
        at = upload(at, "query", f"{kind}.png", _circle_cross(kind, 99))
        assert top_class(at) == name


def test_a_long_symbol_name_is_shortened_with_a_message_and_a_prediction_stays_on_one_line():
    long = "a very long name for a small round symbol"  # 41 characters, more than a file may hold
    taught = TaughtSet(("ring" * 10, "ex"), tuple(tuple(preprocess_bytes(_circle_cross(k, s)) for s in range(3))
                                               for k in ("circle", "cross")))
    at = page()
    at.sidebar.radio[0].set_value("Teach").run()
    at.file_uploader(key="teach-file").set_value(("taught.json", taught.to_bytes(), "application/json")).run()
    assert not at.exception
    assert at.text_input(key="teach-name-0").value == "ring" * 5
    assert any("at most 20 characters" in w.value and "shortened" in w.value for w in at.warning)
    at.text_input(key="teach-name-1").set_value(long[:20]).run()
    assert any("A name is at most 20 characters" in c.value for c in at.caption)
    at.button(key="teach-adapt").click().run()
    at = upload(at, "query", "circle.png", _circle_cross("circle", 99))
    shown = next(m.value for m in at.markdown if "dp-top" in m.value)
    assert top_class(at) == "ring" * 5 and "white-space:nowrap" in shown and "font-size:2.0rem" in shown


def test_a_malformed_taught_set_shows_an_error_and_keeps_the_page_running():
    at = page()
    at.sidebar.radio[0].set_value("Teach").run()
    bad = json.dumps({"format": "meta-learning-lab/taught-set", "version": 99}).encode()
    at.file_uploader(key="teach-file").set_value(("taught.json", bad, "application/json")).run()
    assert not at.exception
    assert any("version 99" in e.value for e in at.error)


def test_a_run_from_the_run_store_can_be_chosen_instead_of_the_shipped_model(tmp_path, monkeypatch):
    from lab import runs
    from lab.config import TrainConfig
    from lab.training import train

    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path))
    config = TrainConfig(dataset="digits", n_query=5, steps=3, val_every=3, val_episodes=5)
    for _ in train(config, runs.create_run(tmp_path, config, "tiny-run")):
        pass
    at = page()
    options = at.sidebar.selectbox[0].options
    assert options[0].startswith(("Default", "Shipped")) and any("tiny-run" in o for o in options)
    at.sidebar.selectbox[0].set_value(next(o for o in options if "tiny-run" in o)).run()
    assert not at.exception and any("Meta-trained on digits" in c.value for c in at.sidebar.caption)
    at = upload(at, "digit", "zero.png", zero())
    assert top_class(at) in tuple("0123456789")


def test_why_shows_the_nearest_examples_where_it_looked_and_says_a_protonet_does_not_step():
    at = upload(page(), "digit", "zero.png", zero())
    at.toggle(key="why").set_value(True).run()
    assert not at.exception and not at.error
    assert top_class(at) == "0"
    captions = [c.value for c in at.caption]
    assert any("nearest to the drawing" in c for c in captions)
    assert any("Integrated Gradients" in c for c in captions)
    assert any("does not adapt by gradient steps" in i.value for i in at.info)
    assert len(at.get("plotly_chart")) == 3  # the bars, the attribution map, the embedding map
    at.radio(key="why-view").set_value(at.radio(key="why-view").options[1]).run()  # the contrast with the runner-up
    assert not at.exception and "rather than" in at.radio(key="why-view").value


def test_why_steps_through_a_maml_model_s_inner_loop(tmp_path, monkeypatch):
    from lab import runs
    from lab.config import TrainConfig
    from lab.training import train

    config = TrainConfig(algorithm="maml", dataset="digits", n_query=5, steps=10, val_every=10, val_episodes=5,
                         hparams={"hidden": 16, "inner_steps": 2})
    run_dir = runs.create_run(tmp_path, config, "maml-digits")
    list(train(config, run_dir))
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path))
    at = page()
    label = [o for o in at.sidebar.selectbox[0].options if "maml-digits" in o][0]
    at.sidebar.selectbox[0].set_value(label).run()
    at = upload(at, "digit", "zero.png", zero())
    at.toggle(key="why").set_value(True).run()
    assert not at.exception and not at.error
    assert at.slider(key="why-step").value == 2  # the last step: the answer shown
    at.slider(key="why-step").set_value(0).run()
    assert not at.exception
    assert any("After 0 step(s)" in c.value for c in at.caption)
