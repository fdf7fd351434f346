"""Calibration: the expected calibration error, temperature scaling on meta-validation episodes, the doubt
rule, and a temperature stored in a checkpoint that the predictor then uses."""

import numpy as np
import pytest
import torch

from conftest import train_tiny
from lab import runs
from lab.calibration import (
    Doubt, calibrate, ece_interval, episode_logits, expected_calibration_error, fit_doubt, fit_temperature, nll,
    read_calibration, write_calibration,
)
from lab.episodes import episode_stream
from lab.predict import DEFAULT_MODEL, Predictor, digit_support, load_digit_bank, load_model, load_predictor


def calibrated_toy(confidences=(0.3, 0.55, 0.8, 0.95), per_bin: int = 200):
    """Queries whose top probability is ``c`` and of which exactly a share ``c`` are right, in each bin."""
    probs, labels = [], []
    for c in confidences:
        row = np.full(4, (1 - c) / 3)
        row[0] = c
        right = round(c * per_bin)
        probs += [row] * per_bin
        labels += [0] * right + [1] * (per_bin - right)
    return np.array(probs), np.array(labels)


def test_a_perfectly_calibrated_toy_model_has_an_ece_of_zero():
    probs, labels = calibrated_toy()
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-9)


def test_a_model_sure_of_everything_and_right_half_the_time_has_an_ece_of_one_half():
    probs = np.tile([1.0, 0.0], (100, 1))
    labels = np.array([0, 1] * 50)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5)


def test_the_ece_weighs_each_bin_by_its_share_of_the_queries():
    calibrated = np.tile([0.5, 0.3, 0.2], (300, 1))  # 300 queries 50% sure, half of them right
    over = np.tile([0.95, 0.03, 0.02], (100, 1))  # 100 queries 95% sure, all wrong: a gap of 0.95
    probs = np.concatenate([calibrated, over])
    labels = np.concatenate([np.tile([0, 1], 150), np.ones(100, dtype=int)])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.95 * 100 / 400)


def test_the_interval_of_the_ece_resamples_whole_episodes():
    probs, labels = calibrated_toy(per_bin=10)  # 40 queries: one episode
    same = ece_interval(np.tile(probs, (30, 1)), np.tile(labels, 30), per_episode=len(labels))
    assert same == pytest.approx(0.0, abs=1e-12)  # thirty identical episodes: every resample is the same
    rng = np.random.default_rng(0)
    noisy = lambda n: (np.tile(probs, (n, 1)), rng.integers(0, 4, len(labels) * n))  # noqa: E731
    few, many = ece_interval(*noisy(10), per_episode=len(labels)), ece_interval(*noisy(160), per_episode=len(labels))
    assert 0 < many < few  # sixteen times the episodes: about a quarter of the width
    with pytest.raises(ValueError, match="whole episodes"):
        ece_interval(probs[:-1], labels[:-1], per_episode=len(labels))


def test_bad_shapes_are_refused_with_a_clear_line():
    with pytest.raises(ValueError, match="expected probabilities"):
        expected_calibration_error(np.ones(5), np.zeros(5))


def test_the_fitted_temperature_is_the_one_that_minimises_the_nll():
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(0, 3, (2000, 5)))
    labels = torch.multinomial(torch.softmax(logits / 2, -1), 1, generator=torch.Generator().manual_seed(0))[:, 0]
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(2.0, rel=0.15)  # the labels were drawn at temperature 2
    grid = np.exp(np.linspace(np.log(0.05), np.log(50), 400))
    best = grid[np.argmin([nll(logits, labels, g) for g in grid])]
    assert t == pytest.approx(best, rel=0.03)
    assert nll(logits, labels, t) <= min(nll(logits, labels, g) for g in grid) + 1e-6


def test_temperature_fitting_lowers_the_nll_of_held_out_episodes_and_keeps_every_prediction(mnist):
    _, model = load_model("default")
    pool = mnist.pool("all")
    fit_on = episode_logits(model, episode_stream(pool, 10, 1, 10, 20, seed=0))
    held_out_logits, held_out_labels = episode_logits(model, episode_stream(pool, 10, 1, 10, 20, seed=1))
    t = fit_temperature(*fit_on)
    assert t != pytest.approx(1.0, abs=0.05)
    assert nll(held_out_logits, held_out_labels, t) < nll(held_out_logits, held_out_labels) - 0.05
    assert torch.equal((held_out_logits / t).argmax(1), held_out_logits.argmax(1))


# --------------------------------------------------------------------------- doubt


def test_the_doubt_rule_flags_the_chosen_share_of_validation_queries_as_far_from_every_class():
    rng = np.random.default_rng(1)
    logits = torch.from_numpy(rng.normal(-5, 2, (1000, 10)))
    labels = logits.argmax(1)
    doubt = fit_doubt(logits, labels, false_alarms=0.02)
    far = (logits.max(1).values < doubt.min_logit).float().mean().item()
    assert far == pytest.approx(0.02, abs=0.002)
    assert doubt.min_probability == 0.0  # every query right: never unsure on probability alone


def test_the_probability_floor_lies_where_queries_stop_being_wrong_more_often_than_right():
    probs, labels = calibrated_toy((0.3, 0.4, 0.9), per_bin=100)  # right 30, 40 and 90% of the time
    doubt = fit_doubt(torch.from_numpy(np.log(probs)), torch.from_numpy(labels))
    assert doubt.min_probability == pytest.approx(0.65, abs=1e-6)  # between 40% and 90% sure
    assert doubt.reason(np.array([0.35, 0.3, 0.2, 0.15]), np.zeros(4), ("a", "b", "c", "d")) == \
        "it is only 35% sure: it could be a or b"
    assert doubt.reason(np.array([0.9, 0.05, 0.03, 0.02]), np.zeros(4)) is None


def test_a_query_far_from_every_class_is_unsure_however_sure_the_softmax_is():
    doubt = Doubt(min_probability=0.5, min_logit=-10.0)
    assert "far from every class" in doubt.reason(np.array([0.99, 0.01]), np.array([-30.0, -35.0]))
    assert doubt.reason(np.array([0.99, 0.01]), np.array([-3.0, -8.0])) is None


# --------------------------------------------------------------------------- stored with the model


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("runs"))


def test_calibrating_a_run_writes_its_temperature_into_the_checkpoint_and_keeps_every_other_key(tiny_run):
    before = runs.load_checkpoint(tiny_run / "best.pt")
    result = calibrate(tiny_run, episodes=10, n_way=10, k_shot=5, device="cpu", metric_episodes=20)
    after = runs.load_checkpoint(tiny_run / "best.pt")
    assert after["temperature"] == pytest.approx(result["temperature"]) and result["temperature"] > 0
    assert set(before) <= set(after)
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])
    assert after["calibration"]["fitted_on"]["split"] == "val"
    assert after["calibration"]["fitted_on"]["n_way"] == 8  # the digits' validation split holds 8 classes
    assert result["nll_after"] <= result["nll_before"] + 1e-9
    t, doubt = read_calibration(tiny_run / "best.pt")
    assert t == pytest.approx(result["temperature"]) and isinstance(doubt, Doubt)


def test_a_run_trained_on_augmented_episodes_is_calibrated_on_validation_episodes_augmented_so(tiny_run):
    from lab.calibration import fit_on_validation

    config, model = runs.load_model(tiny_run)
    plain = fit_on_validation(model, config, episodes=10)
    varied = fit_on_validation(model, config.replace(augment=True), episodes=10)
    again = fit_on_validation(model, config.replace(augment=True), episodes=10)
    assert not plain["fitted_on"]["augmented"] and varied["fitted_on"]["augmented"]
    assert varied["temperature"] != plain["temperature"]  # other images, other logits
    assert again["temperature"] == varied["temperature"]  # the augmentation is seeded


def test_the_predictor_divides_the_logits_by_the_checkpoints_temperature(tmp_path):
    out = write_calibration(runs.default_model(), {"temperature": 2.5}, tmp_path / "hot.pt")
    _, plain = load_predictor("default")
    _, hot = load_predictor(out)
    assert plain.temperature == 1.0 and hot.temperature == 2.5
    support = digit_support(load_digit_bank("digits"), 3, seed=0)
    queries = support.images[::4]
    assert np.allclose(hot.logits(queries, support) * 2.5, plain.logits(queries, support), atol=1e-4)
    p_plain, p_hot = plain.probabilities(queries, support), hot.probabilities(queries, support)
    assert (p_plain.argmax(1) == p_hot.argmax(1)).all() and (p_hot.max(1) < p_plain.max(1) + 1e-6).all()


def test_a_checkpoint_without_a_temperature_reads_as_one_and_a_bad_one_is_refused(tmp_path):
    assert read_calibration(DEFAULT_MODEL) == (1.0, None)
    bad = write_calibration(DEFAULT_MODEL, {"temperature": -1.0}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="invalid temperature"):
        read_calibration(bad)
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        Predictor(load_model("default")[1], temperature=0.0)
