"""The rate at which a gradient learner adapts to each task shape: looked up, applied, fitted on
meta-validation, stored in the checkpoint and loaded with it."""

import json

import pytest
import torch

from lab import runs, zoo
from lab.adaptation import FIT_SHAPES, SCALES, adapts_by_rate, check_rate_scales, rate_scale
from lab.algorithms import build
from lab.calibration import calibrate
from lab.cli import main
from lab.config import TrainConfig
from lab.data import load_dataset
from lab.rate_fit import fit_rate_scales
from lab.episodes import episode_stream
from lab.training import train


def test_a_shape_takes_its_own_factor_else_the_nearest_fitted_shapes_else_one():
    scales = {"5w1s": 1.0, "10w5s": 0.3, "20w1s": 0.5}
    assert rate_scale(scales, 10, 5) == 0.3
    assert rate_scale(scales, 10, 4) == 0.3  # nearest in log ways and log shots
    assert rate_scale(scales, 5, 2) == 1.0
    assert rate_scale(scales, 30, 1) == 0.5
    assert rate_scale({}, 10, 5) == 1.0


@pytest.mark.parametrize("bad, message", [
    ({"ten": 0.5}, "not a task shape"), ({"10w0s": 0.5}, "not a task shape"), ({"10w5s": 0}, r"in \(0, 10\]"),
    ({"10w5s": float("nan")}, r"in \(0, 10\]"), ({"10w5s": "0.5"}, r"in \(0, 10\]"), ([0.5], "not a table"),
])
def test_a_bad_table_of_factors_is_refused_in_one_line(bad, message):
    with pytest.raises(ValueError, match=message) as err:
        check_rate_scales(bad)
    assert "\n" not in str(err.value)


def maml(**hparams):
    return build(TrainConfig(algorithm="maml", dataset="digits", hparams={"inner_steps": 1, **hparams})).eval()


def digits_episode(n_way=5, k_shot=1, seed=0):
    return episode_stream(load_dataset("digits").pool("val"), n_way, k_shot, 5, 1, seed)[0]


def test_the_factor_of_the_tasks_shape_scales_the_adaptation_step():
    model, ep = maml(), digits_episode()
    full = model.adapt(ep.support_x, ep.support_y, 5)(ep.query_x)
    assert full.abs().max() > 0
    model.rate_scales = {"5w1s": 0.5, "10w5s": 4.0}
    half = model.adapt(ep.support_x, ep.support_y, 5)(ep.query_x)
    # One step from a head of zeros moves only the head, so the logits are linear in the step's size.
    assert torch.allclose(half, 0.5 * full, atol=1e-6)
    meta_trained = model.task_loss(ep.support_x, ep.support_y, ep.query_x, ep.query_y, 5)[0]
    model.rate_scales = {}
    assert torch.allclose(model.task_loss(ep.support_x, ep.support_y, ep.query_x, ep.query_y, 5)[0], meta_trained)


def test_a_learned_optimizer_reads_the_gradient_itself_and_takes_no_factor():
    model = build(TrainConfig(algorithm="learned-opt", dataset="digits", hparams={"inner_steps": 1}))
    protonet = build(TrainConfig(algorithm="protonet", dataset="digits"))
    assert adapts_by_rate(maml()) and not adapts_by_rate(model) and not adapts_by_rate(protonet)
    with pytest.raises(ValueError, match="does not adapt by a gradient rate"):
        fit_rate_scales(model, load_dataset("digits").pool("val"))


def test_fitting_picks_the_factor_that_answers_the_validation_episodes_best_for_each_shape_that_fits():
    model, pool = maml(), load_dataset("digits").pool("val")  # 8 validation classes: no 10- or 20-way tasks
    result = fit_rate_scales(model, pool, scales=(1.0, 0.1), episodes=6)
    assert set(result["rate_scales"]) == {"5w1s", "5w5s"} and model.rate_scales == result["rate_scales"]
    for shape, factor in result["rate_scales"].items():
        accuracy = result["accuracy"][shape]
        assert set(accuracy) == {"1.0", "0.1"} and accuracy[str(factor)] == max(accuracy.values())
    assert {(10, 5), (20, 1)} <= set(FIT_SHAPES) and SCALES[0] == 1.0


@pytest.fixture(scope="module")
def tiny_maml_run(tmp_path_factory):
    config = TrainConfig(algorithm="maml", dataset="digits", n_query=5, steps=2, val_every=2, val_episodes=4,
                         hparams={"inner_steps": 1})
    run_dir = runs.create_run(tmp_path_factory.mktemp("runs"), config, "tiny-maml")
    for _ in train(config, run_dir):
        pass
    return run_dir


def test_calibrating_a_gradient_learner_stores_its_factors_and_loading_hands_them_to_the_model(tiny_maml_run, tmp_path):
    out = tmp_path / "calibrated.pt"
    result = calibrate(tiny_maml_run, episodes=5, device="cpu", out=out, rate_episodes=4)
    assert set(result["rate_scales"]) == {"5w1s", "5w5s"} and result["rate_fit"]["episodes"] == 4
    assert runs.load_checkpoint(out)["rate_scales"] == result["rate_scales"]
    _, model = runs.load_model(out)
    assert model.rate_scales == result["rate_scales"]
    exported = runs.export_model(out, tmp_path / "exported.pt")
    assert exported["rate_scales"] == result["rate_scales"]
    _, plain = runs.load_model(tiny_maml_run)  # a checkpoint without factors adapts at meta-training's rate
    assert plain.rate_scales == {}


def test_a_checkpoint_with_a_damaged_table_of_factors_is_refused_in_one_line(tiny_maml_run, tmp_path):
    checkpoint = runs.load_checkpoint(tiny_maml_run / "best.pt")
    checkpoint["rate_scales"] = {"5w1s": -2}
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad.pt holds the rate scale -2 for 5w1s"):
        runs.load_model(tmp_path / "bad.pt")


def test_zoo_calibrate_fits_a_shipped_models_rates_again_and_keeps_its_weights(tmp_path, monkeypatch, capsys):
    recipe = {"summary": "a MAML on the bundled digits", "paper": "test",
              "config": {"algorithm": "maml", "dataset": "digits", "n_way": 5, "k_shot": 1, "n_query": 5,
                         "meta_batch": 2, "meta_lr": 0.001, "steps": 2, "val_every": 2, "val_episodes": 4,
                         "log_every": 1, "hparams": {"inner_steps": 1}},
              "published": {}, "floors": {"5w1s": 0.0}}
    (tmp_path / "recipes.json").write_text(json.dumps({"tiny-maml": recipe}))
    monkeypatch.setattr(zoo, "RECIPES_FILE", tmp_path / "recipes.json")
    monkeypatch.setenv("LAB_ZOO_DIR", str(tmp_path / "zoo"))
    monkeypatch.setattr("lab.adaptation.FIT_EPISODES", 3)
    monkeypatch.setattr("lab.calibration.CALIBRATION_EPISODES", 5)
    list(zoo.train("tiny-maml", runs_dir=tmp_path / "runs"))
    before = runs.load_checkpoint(zoo.model_path("tiny-maml"))
    manifest = zoo.read_manifest("tiny-maml")
    assert set(manifest["calibration"]["rate_scales"]) == {"5w1s", "5w5s"}  # shipping fitted them
    manifest["measured"] = {"5w1s": {"value": 50.0}}
    runs.write_json(zoo.manifest_path("tiny-maml"), manifest)
    assert main(["zoo", "calibrate", "tiny-maml"]) == 0
    assert "adaptation rate 5w1s x" in capsys.readouterr().err
    after, manifest = runs.load_checkpoint(zoo.model_path("tiny-maml")), zoo.check_model("tiny-maml")
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])
    assert after["rate_scales"] == manifest["calibration"]["rate_scales"]
    assert manifest["measured"] == {}  # what was measured described the file before
