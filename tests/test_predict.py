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

from lab.predict import (
    DEFAULT_MODEL, BadTaughtSet, Predictor, SupportSet, TaughtSet, digit_support, load_digit_bank, load_model,
)
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
    from lab import runs
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


@pytest.mark.slow
def test_bench_predict_reports_percentiles_and_the_adaptation_time():
    out = json.loads(lab("bench", "predict", "--json").stdout)
    assert out["drawings"] == 200 and 0 < out["p50_ms"] <= out["p95_ms"] and out["adapt_ms"] > 0
    assert out["accuracy"] > 0.5
