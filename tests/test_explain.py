"""Explanations of a prediction: neighbours, attributions and the inner steps (lab.explain)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lab import runs
from lab.algorithms import REGISTRY, build
from lab.config import TrainConfig
from lab.episodes import sample_episode
from lab.explain import explain
from lab.training import train

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"maml": {"hidden": 16}, "fomaml": {"hidden": 16}, "anil": {"hidden": 16}, "metasgd": {"hidden": 16},
         "learned-opt": {"hidden": 16}, "reptile": {"hidden": 16}, "metanet": {"hidden": 16}}
GRADIENT_BASED = ("maml", "fomaml", "anil", "metasgd", "learned-opt", "reptile")


@pytest.fixture(scope="module")
def episode(digits):
    return sample_episode(digits.pool("test"), 5, 2, 1, np.random.default_rng(4))


def names(n):
    return tuple(f"class {c}" for c in range(n))


@pytest.mark.parametrize("algorithm", [a for a in REGISTRY if a != "clustered"])
def test_every_algorithm_explains_or_says_which_view_does_not_apply(algorithm, episode):
    model = build(TrainConfig(algorithm=algorithm, dataset="digits", hparams=SMALL.get(algorithm, {})))
    image = episode.query_x[0]
    out = explain(model, episode.support_x, episode.support_y, image, names(5))
    assert set(out["probabilities"]) == set(names(5)) and out["prediction"] in names(5)
    attr = np.array(out["attribution"]["map"])
    assert attr.shape == image.shape[1:] and np.isfinite(attr).all()
    assert np.array(out["attribution"]["contrast"]["map"]).shape == image.shape[1:]
    assert [n["class"] for n in out["neighbours"]] and len(out["neighbours"]) == 5
    assert len(out["map"]["support"]) == len(episode.support_y) and len(out["map"]["image"]) == 2
    steps = out["adaptation"]
    if algorithm in GRADIENT_BASED:
        assert steps["applies"] and steps["steps"][0]["step"] == 0 and len(steps["steps"]) == model.test_steps + 1
    else:
        assert not steps["applies"] and "does not adapt by gradient steps" in steps["reason"]
    if algorithm == "metanet":  # what its memory read attended to, summing to one over the support set
        assert len(steps["memory"]) == len(episode.support_y)
        assert sum(r["attention"] for r in steps["memory"]) == pytest.approx(1.0, abs=1e-5)
    json.dumps(out)  # JSON-ready


@pytest.mark.parametrize("algorithm", ["protonet", "maml", "metanet"])
def test_a_support_image_s_nearest_neighbour_is_itself_at_distance_zero(algorithm, episode):
    model = build(TrainConfig(algorithm=algorithm, dataset="digits", hparams=SMALL.get(algorithm, {})))
    out = explain(model, episode.support_x, episode.support_y, episode.support_x[3], names(5))
    own = [n for n in out["neighbours"] if n["class"] == names(5)[int(episode.support_y[3])]][0]
    assert own["index"] == 3 and own["distance"] == pytest.approx(0.0, abs=1e-5)
    assert out["neighbours"][0] == own  # the nearest of all


def test_a_trained_maml_lowers_its_support_loss_step_by_step_and_ends_at_the_predictor_s_answer(tmp_path, episode):
    config = TrainConfig(algorithm="maml", dataset="digits", n_query=5, meta_batch=4, steps=30, val_every=30,
                         val_episodes=5, meta_lr=0.003, hparams={"hidden": 16, "inner_steps": 3})
    run_dir = runs.create_run(tmp_path, config, "maml")
    list(train(config, run_dir))
    _, model = runs.load_model(run_dir)
    image = episode.query_x[1]
    out = explain(model, episode.support_x, episode.support_y, image, names(5))
    losses = [s["support_loss"] for s in out["adaptation"]["steps"]]
    assert len(losses) == 4 and all(b < a for a, b in zip(losses, losses[1:])), losses
    with torch.no_grad():
        expected = torch.softmax(model.adapt(episode.support_x, episode.support_y, 5)(image[None])[0], -1)
    assert out["adaptation"]["steps"][-1]["probabilities"] == pytest.approx(expected.tolist(), abs=1e-5)
    assert list(out["probabilities"].values()) == pytest.approx(expected.tolist(), abs=1e-5)
    first, second = out["adaptation"]["steps"][1]["moved"], out["adaptation"]["steps"][2]["moved"]
    # every class starts alike, so the first step moves the head alone; the next ones move every layer
    assert first["head.weight"] > 0 and all(v == 0 for k, v in first.items() if k.startswith("encoder."))
    assert all(v > 0 for v in second.values())


def test_predict_explains_on_the_command_line(tmp_path, mnist):
    from PIL import Image, ImageDraw

    drawing = Image.new("L", (280, 280), 0)
    ImageDraw.Draw(drawing).line([(140, 40), (140, 240)], fill=255, width=20)
    drawing.save(tmp_path / "one.png")
    done = subprocess.run([sys.executable, "-m", "lab", "predict", "--image", str(tmp_path / "one.png"), "--explain",
                           "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    explanation = result["explanation"]
    assert explanation["prediction"] == result["prediction"]
    assert np.array(explanation["attribution"]["map"]).shape == (28, 28)
    assert explanation["neighbours"][0]["class"] == result["prediction"]  # the nearest example is of its class
    assert not explanation["adaptation"]["applies"]  # the shipped model is a ProtoNet
    assert result["timings_ms"]["explain"] > 0
