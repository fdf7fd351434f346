"""Prediction from a drawing: the shipped model, support sets, the cached predictor, taught-set files, and
``python -m lab predict`` / ``export``."""

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from lab import runs
from lab.predict import DEFAULT_MODEL, Predictor, SupportSet, digit_support, load_digit_bank, load_model
from lab.taught import BadTaughtSet, TaughtSet
from lab.preprocess import preprocess_bytes

ROOT = Path(__file__).resolve().parents[1]


def lab(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "lab", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"lab {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def symbol(kind: str, seed: int, size: int = 200) -> bytes:
    """A hand-drawn-looking circle or cross: black ink on white, position and size jittered by ``seed``."""
    rng = np.random.default_rng(seed)
    im = Image.new("L", (size, size), 255)
    d = ImageDraw.Draw(im)
    x0, y0 = rng.integers(15, 45, 2)
    x1, y1 = size - rng.integers(15, 45, 2)
    width = int(rng.integers(8, 16))
    if kind == "circle":
        d.ellipse((x0, y0, x1, y1), outline=0, width=width)
    else:
        d.line((x0, y0, x1, y1), fill=0, width=width)
        d.line((x0, y1, x1, y0), fill=0, width=width)
    return png(im)


def taught_circles_and_crosses(shots: int = 3) -> TaughtSet:
    examples = tuple(tuple(preprocess_bytes(symbol(kind, seed)) for seed in range(shots))
                     for kind in ("circle", "cross"))
    return TaughtSet(("circle", "cross"), examples)


@pytest.fixture(scope="module")
def predictor():
    _, model = load_model("default")
    return Predictor(model)


# --------------------------------------------------------------------------- the shipped model


def test_the_shipped_model_is_small_has_no_optimiser_state_and_loads_with_weights_only():
    assert DEFAULT_MODEL.is_file() and DEFAULT_MODEL.stat().st_size < 2 * 2**20
    checkpoint = torch.load(DEFAULT_MODEL, weights_only=True)
    assert "optimizer" not in checkpoint and "rng" not in checkpoint
    assert checkpoint["config"]["algorithm"] == "protonet" and checkpoint["config"]["dataset"] == "omniglot"
    config, model = load_model("default")
    assert config.algorithm == "protonet" and not model.training


# --------------------------------------------------------------------------- support sets and the predictor


@pytest.mark.parametrize("k_shot", [1, 5, 10])
def test_a_digit_support_set_holds_k_examples_of_each_digit_and_the_same_seed_gives_the_same_set(k_shot):
    bank = load_digit_bank("digits")
    a, b, c = digit_support(bank, k_shot, seed=3), digit_support(bank, k_shot, seed=3), digit_support(bank, k_shot, 4)
    assert a.images.shape == (10 * k_shot, 28, 28) and np.bincount(a.labels).tolist() == [k_shot] * 10
    assert a.key == b.key and np.array_equal(a.images, b.images) and a.key != c.key
    assert a.class_names == tuple("0123456789")


def test_mnist_support_sets_come_from_the_training_images_only(mnist):
    bank = load_digit_bank("mnist")
    assert bank.source == "mnist" and len(bank.images) == 60_000
    assert np.array_equal(bank.images[-1], mnist.images[59_999, 0].numpy())


@pytest.mark.parametrize("k_shot", [0, 11])
def test_k_outside_one_to_ten_is_refused(k_shot):
    with pytest.raises(ValueError, match="k_shot must be a whole number from 1 to 10"):
        digit_support(load_digit_bank("digits"), k_shot)


def test_the_predictor_adapts_once_per_support_set_and_predicts_as_the_model_does(predictor):
    support = digit_support(load_digit_bank("digits"), 3, seed=7)
    assert predictor.adapt(support) > 0
    assert predictor.adapt(support) == 0.0  # cached
    queries = support.images[::3]
    x, y = support.tensors()
    direct = torch.softmax(predictor.model.adapt(x, y, 10)(torch.from_numpy(queries).float().div(255).unsqueeze(1)), -1)
    assert np.allclose(predictor.probabilities(queries, support), direct.numpy(), atol=1e-5)


def test_a_taught_set_of_two_symbols_recognises_a_new_drawing_of_each(predictor):
    support = taught_circles_and_crosses().support()
    for kind in ("circle", "cross"):
        for seed in (10, 11, 12):
            assert predictor.predict_bytes(symbol(kind, seed), support).top == kind


def test_a_prediction_reports_probabilities_that_sum_to_one_and_its_timings(predictor):
    p = predictor.predict_bytes(symbol("circle", 1), digit_support(load_digit_bank("digits"), 5)).to_dict()
    assert set(p["probabilities"]) == set("0123456789") and abs(sum(p["probabilities"].values()) - 1) < 1e-4
    assert p["prediction"] == max(p["probabilities"], key=p["probabilities"].get)
    assert {"preprocess", "adapt", "predict"} <= set(p["timings_ms"])


# --------------------------------------------------------------------------- doubt


def scribble(seed: int) -> bytes:
    """A tangle of pen strokes across the pad, as the pad sends it: no digit at all."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGBA", (280, 280), (255, 255, 255, 255))
    d = ImageDraw.Draw(im)
    for _ in range(3):
        points = [tuple(rng.uniform(20, 260, 2)) for _ in range(12)]
        d.line(points, fill=(17, 17, 17, 255), width=int(rng.integers(8, 20)), joint="curve")
    return png(im)


def noisy_photo(seed: int) -> bytes:
    """A photo of nothing in particular: coloured blobs under sensor noise."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (400, 300), tuple(int(v) for v in rng.integers(90, 230, 3)))
    d = ImageDraw.Draw(im)
    for _ in range(12):
        x, y, r = rng.uniform(0, 400), rng.uniform(0, 300), rng.uniform(10, 80)
        d.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    noisy = np.asarray(im) / 255 + rng.normal(0, 0.1, (300, 400, 3))
    return png(Image.fromarray((np.clip(noisy, 0, 1) * 255).astype(np.uint8)))


@pytest.fixture(scope="module")
def digit_predictor():
    from lab.predict import load_predictor

    return load_predictor("default")[1], digit_support(load_digit_bank("mnist"), 5, seed=0)


def test_a_scribble_and_a_noisy_photo_come_out_unsure_and_say_why(digit_predictor, mnist):
    predictor, support = digit_predictor
    unsure = [predictor.predict_bytes(data, support) for data in [scribble(s) for s in range(10)]]
    assert sum(p.unsure for p in unsure) >= 8
    photos = [predictor.predict_bytes(noisy_photo(s), support) for s in range(5)]
    assert all(p.unsure for p in photos)
    p = next(p for p in unsure if p.unsure).to_dict()
    assert p["unsure"] is True and p["reason"] and "\n" not in p["reason"]


def test_clean_drawings_of_digits_are_mostly_sure_and_right_when_sure(digit_predictor, mnist):
    from lab.drawings import draw_digit, mnist_test_digits

    predictor, support = digit_predictor
    digits, labels = mnist_test_digits(mnist, 100, seed=4)
    predictions = [predictor.predict_bytes(draw_digit(d, 20), support) for d in digits]
    sure = [p.top == str(label) for p, label in zip(predictions, labels) if not p.unsure]
    assert len(sure) >= 80 and np.mean(sure) >= 0.93


def test_a_digit_support_sets_doubt_rule_is_chosen_on_held_out_digits_never_its_own(digit_predictor):
    predictor, support = digit_predictor
    held, labels = support.validation
    assert len(held) >= 190 and np.bincount(labels).min() >= 19
    own = {image.tobytes() for image in support.images}
    assert not any(image.tobytes() in own for image in held)
    doubt = predictor.doubt_for(support)
    logits = predictor.logits(held, support)
    assert np.mean(logits.max(1) < doubt.min_logit) <= 0.03  # few held-out digits are called far from every class
    assert 0.0 <= doubt.min_probability < 0.9


def test_a_taught_set_has_no_doubt_rule_unless_the_checkpoint_brings_one(predictor):
    support = taught_circles_and_crosses().support()
    assert support.validation is None and predictor.doubt_for(support) is None
    assert not predictor.predict_bytes(symbol("circle", 20), support).unsure


def test_an_animated_gif_prediction_says_the_first_frame_was_used(predictor):
    frames = [Image.open(io.BytesIO(symbol(kind, 3))).convert("P") for kind in ("circle", "cross")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    p = predictor.predict_bytes(buf.getvalue(), taught_circles_and_crosses().support())
    assert p.top == "circle" and p.notes == ("the file holds 2 frames: only the first was used",)
    assert p.to_dict()["notes"] == list(p.notes)


def test_a_support_set_missing_a_class_is_refused():
    with pytest.raises(ValueError, match="every one of the 3 classes"):
        SupportSet(np.zeros((2, 28, 28), np.uint8), np.array([0, 2]), ("a", "b", "c"))


# --------------------------------------------------------------------------- taught-set files


def test_a_taught_set_file_round_trips_names_and_drawings():
    taught = taught_circles_and_crosses(shots=2)
    data = taught.to_bytes()
    again = TaughtSet.from_bytes(data)
    assert again.class_names == ("circle", "cross") and len(data) < 20_000
    for shots, shots_again in zip(taught.examples, again.examples):
        assert all(np.array_equal(a, b) for a, b in zip(shots, shots_again))
    assert again.support().key == taught.support().key


def _doc(**changes) -> bytes:
    doc = json.loads(taught_circles_and_crosses(shots=1).to_bytes())
    for key, value in changes.items():
        doc[key] = value
    return json.dumps(doc).encode()


def _shot(n_bytes: int = 784) -> str:
    return base64.b64encode(bytes(n_bytes)).decode()


def _one_class(**changes) -> dict:
    return {"name": "a", "examples": [_shot()], **changes}


MALFORMED = {
    "empty": (b"", "empty"),
    "not JSON": (b"\x89PNG\r\n\x1a\n....", "not JSON"),
    "JSON of something else": (b'{"hello": "world"}', "format is not"),
    "another version": (_doc(version=2), "version 2; this lab reads version 1"),
    "other image size": (_doc(image_size=32), "must be 28x28"),
    "one class": (_doc(classes=[_one_class()]), "2 to 10 classes, not 1"),
    "eleven classes": (_doc(classes=[_one_class(name=f"c{i}") for i in range(11)]), "2 to 10 classes, not 11"),
    "same name twice": (_doc(classes=[_one_class(), _one_class()]), "names must differ"),
    "blank name": (_doc(classes=[_one_class(), _one_class(name="  ")]), "1 to 40 characters"),
    "six examples": (_doc(classes=[_one_class(), _one_class(name="b", examples=[_shot()] * 6)]), "1 to 5"),
    "no examples": (_doc(classes=[_one_class(), _one_class(name="b", examples=[])]), "1 to 5"),
    "a short drawing": (_doc(classes=[_one_class(), _one_class(name="b", examples=[_shot(783)])]), "783 bytes"),
    "not base64": (_doc(classes=[_one_class(), _one_class(name="b", examples=["%%%"])]), "not base64"),
    "classes not a list": (_doc(classes="circle"), "must be a list"),
    "too big": (b" " * 1_000_001, "the limit is 1,000,000"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_taught_set_file_is_refused_with_a_clear_message(case):
    data, message = MALFORMED[case]
    with pytest.raises(BadTaughtSet) as caught:
        TaughtSet.from_bytes(data)
    assert message in str(caught.value) and "\n" not in str(caught.value)


# --------------------------------------------------------------------------- the command line


def cli(capsys, *args) -> tuple[int, str, str]:
    """``python -m lab ARGS`` in this process: exit status, stdout, stderr."""
    from lab.cli import main

    status = main(list(args))
    out = capsys.readouterr()
    return status, out.out, out.err


def test_predict_json_names_the_drawn_digit_with_probabilities_and_timings(tmp_path):
    image = tmp_path / "zero.png"
    im = Image.new("RGB", (200, 200), "white")
    ImageDraw.Draw(im).ellipse((55, 25, 145, 175), outline="black", width=14)
    im.save(image)
    out = json.loads(lab("predict", "--run", "default", "--image", str(image), "--support", "digits", "--k-shot",
                         "5", "--json").stdout)
    assert out["prediction"] == "0" and out["n_way"] == 10 and out["k_shot"] == 5
    assert abs(sum(out["probabilities"].values()) - 1) < 1e-4
    assert {"preprocess", "adapt", "predict", "load_model"} <= set(out["timings_ms"])
    assert out["unsure"] is False and out["reason"] is None and out["temperature"] == 1.0 and out["notes"] == []


def test_predict_json_says_when_it_is_unsure_and_why(tmp_path, capsys):
    (tmp_path / "scribble.png").write_bytes(noisy_photo(0))
    status, out, _ = cli(capsys, "predict", "--image", str(tmp_path / "scribble.png"), "--support", "mnist", "--json")
    out = json.loads(out)
    assert status == 0 and out["unsure"] is True and "far from every class" in out["reason"]
    status, out, _ = cli(capsys, "predict", "--image", str(tmp_path / "scribble.png"), "--support", "mnist")
    assert "not sure: it is far from every class" in out


def test_predict_divides_by_the_temperature_a_calibrated_checkpoint_holds(tmp_path, capsys):
    from lab.calibration import write_calibration

    hot = write_calibration(runs.default_model(), {"temperature": 3.0}, tmp_path / "hot.pt")
    (tmp_path / "zero.png").write_bytes(symbol("circle", 5))
    results = [json.loads(cli(capsys, "predict", "--run", str(run), "--image", str(tmp_path / "zero.png"),
                              "--support", "digits", "--json")[1]) for run in ("default", hot)]
    assert results[1]["temperature"] == 3.0 and results[0]["prediction"] == results[1]["prediction"]
    assert results[1]["confidence"] < results[0]["confidence"]


def test_predict_with_a_taught_set_file_names_the_taught_symbol(tmp_path, capsys):
    (tmp_path / "taught.json").write_bytes(taught_circles_and_crosses().to_bytes())
    (tmp_path / "query.png").write_bytes(symbol("cross", 42))
    status, out, _ = cli(capsys, "predict", "--image", str(tmp_path / "query.png"), "--taught",
                         str(tmp_path / "taught.json"), "--json")
    assert status == 0
    out = json.loads(out)
    assert out["prediction"] == "cross" and set(out["probabilities"]) == {"circle", "cross"}


def test_a_bad_image_makes_the_predict_process_exit_with_one_line_and_no_traceback(tmp_path):
    path = tmp_path / "notes.png"
    path.write_bytes(b"not an image at all\n")
    proc = lab("predict", "--image", str(path), "--support", "digits", "--json", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == "error: not an image: expected a PNG, JPEG, BMP, GIF or WebP file"


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("zero-byte.png", b"", "empty"),
        ("blank.png", png(Image.new("RGB", (100, 100), "white")), "draw something first"),
        ("missing.png", None, "No such file"),
        ("huge.png", b"\x89PNG" + bytes(5 * 2**20), "limit is 5 MB"),
        ("taught.json", b"{", "not JSON"),
    ],
    ids=["zero-byte", "blank", "missing", "over-the-cap", "malformed-taught-set"],
)
def test_predict_on_bad_input_exits_with_one_line(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    args = ["--image", str(path)]
    if name == "taught.json":
        (tmp_path / "q.png").write_bytes(symbol("circle", 0))
        args = ["--image", str(tmp_path / "q.png"), "--taught", str(path)]
    status, out, err = cli(capsys, "predict", *args, "--support", "digits", "--json")
    assert status == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_export_strips_the_optimiser_and_predicts_as_the_run_does(tmp_path, capsys):
    from lab.config import TrainConfig
    from lab.training import train

    config = TrainConfig(dataset="digits", n_query=5, steps=5, val_every=5, val_episodes=5)
    run_dir = runs.create_run(tmp_path, config, "tiny")
    for _ in train(config, run_dir):
        pass
    status, out, _ = cli(capsys, "export", str(run_dir), "--out", str(tmp_path / "tiny.pt"), "--json")
    out = json.loads(out)
    assert status == 0 and out["bytes"] < (run_dir / "best.pt").stat().st_size and out["step"] == 5
    exported = torch.load(tmp_path / "tiny.pt", weights_only=True)
    assert "optimizer" not in exported
    support = digit_support(load_digit_bank("digits"), 2)
    a = Predictor(load_model(run_dir)[1]).probabilities(support.images, support)
    b = Predictor(load_model(tmp_path / "tiny.pt")[1]).probabilities(support.images, support)
    assert np.array_equal(a, b)


def test_default_names_the_shipped_model_in_eval(capsys):
    status, out, _ = cli(capsys, "eval", "default", "--dataset", "digits", "--n-way", "5", "--episodes", "20",
                         "--json")
    out = json.loads(out)
    assert status == 0 and out["run"] == "default" and out["dataset"] == "digits" and 0.2 < out["accuracy"] <= 1
    assert "calibration" not in out


def test_eval_with_calibration_reports_the_ece_before_and_after_the_checkpoints_temperature(tmp_path, capsys):
    from lab.calibration import write_calibration

    cool = write_calibration(DEFAULT_MODEL, {"temperature": 0.5}, tmp_path / "cool.pt")
    status, out, _ = cli(capsys, "eval", str(cool), "--dataset", "digits", "--n-way", "10", "--k-shot", "1",
                         "--episodes", "20", "--calibration", "--json")
    c = json.loads(out)["calibration"]
    assert status == 0 and c["temperature"] == 0.5 and c["temperature_from"] == {"source": "checkpoint"}
    assert c["ece_bins"] == 15 and 0 <= c["ece_before"] <= 1 and c["ece_after"] > c["ece_before"]  # T < 1: sharper
    assert c["nll_after"] > c["nll_before"]


def test_calibrate_writes_a_calibrated_copy_and_leaves_the_run_as_it_was(tmp_path, capsys, monkeypatch):
    from lab.config import TrainConfig
    from lab.training import train

    monkeypatch.setattr("lab.metric_fit.METRIC_EPISODES", 20)  # a tiny model's metric and views, on fewer episodes
    config = TrainConfig(dataset="digits", n_query=5, steps=3, val_every=3, val_episodes=5)
    run_dir = runs.create_run(tmp_path, config, "tiny")
    for _ in train(config, run_dir):
        pass
    before = (run_dir / "best.pt").read_bytes()
    status, out, _ = cli(capsys, "calibrate", str(run_dir), "--episodes", "10", "--out", str(tmp_path / "c.pt"),
                         "--json")
    out = json.loads(out)
    assert status == 0 and (run_dir / "best.pt").read_bytes() == before
    assert torch.load(tmp_path / "c.pt", weights_only=True)["temperature"] == pytest.approx(out["temperature"])
    assert out["fitted_on"]["dataset"] == "digits" and out["fitted_on"]["split"] == "val"


@pytest.mark.slow
def test_bench_predict_reports_percentiles_and_the_adaptation_time():
    out = json.loads(lab("bench", "predict", "--json").stdout)
    assert out["drawings"] == 200 and 0 < out["p50_ms"] <= out["p95_ms"] and out["adapt_ms"] > 0
    assert out["accuracy"] > 0.5
