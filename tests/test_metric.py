"""The metric a Prototypical Network measures a new task's distances in: the shrunk whitening, its
fitting on meta-validation, and its life in a checkpoint (stored, loaded, exported, refused when damaged)."""

import json

import pytest
import torch

from conftest import train_tiny
from lab import runs
from lab.algorithms import build
from lab.calibration import calibrate
from lab.cli import main
from lab.config import TrainConfig
from lab.data import load_dataset
from lab.episodes import episode_stream
from lab.explain import embedding_function
from lab.metric import check_metric, shrunk_whitening
from lab.metric_fit import embedding_covariance, fit_metric
from lab.models import proto_logits, prototypes


def random_covariance(d=6, seed=0):
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64)


@pytest.mark.parametrize("shrinkage", [0.3, 1.0, 10.0])
def test_the_whitening_squared_inverts_the_shrunk_covariance_at_the_embeddings_scale(shrinkage):
    cov = random_covariance()
    w = shrunk_whitening(cov, shrinkage).double()
    scale = cov.diagonal().mean()
    assert torch.allclose(w, w.T, atol=1e-5)
    target = scale * (1 + shrinkage) * torch.eye(6, dtype=torch.float64)
    assert torch.allclose(w @ w @ (cov + shrinkage * scale * torch.eye(6, dtype=torch.float64)), target, atol=1e-4 * target[0, 0])


def test_an_isotropic_covariance_or_a_huge_shrinkage_leaves_plain_distance():
    assert torch.allclose(shrunk_whitening(3.0 * torch.eye(5), 0.5), torch.eye(5), atol=1e-5)
    assert torch.allclose(shrunk_whitening(random_covariance(), 1e7), torch.eye(6), atol=1e-3)


@pytest.mark.parametrize("bad, message", [
    ([1, 2], "not a table with a whitening matrix"),
    ({"whitening": torch.eye(3), "shrinkage": 1.0}, r"shape \(3, 3\); this model's embedding needs \(4, 4\)"),
    ({"whitening": "eye", "shrinkage": 1.0}, r"shape str"),
    ({"whitening": torch.full((4, 4), float("nan")), "shrinkage": 1.0}, "not finite"),
    ({"whitening": torch.eye(4), "shrinkage": -1}, "shrinkage -1: it must be a positive number"),
    ({"whitening": torch.eye(4), "shrinkage": True}, "shrinkage True"),
])
def test_a_damaged_metric_is_refused_in_one_line(bad, message):
    with pytest.raises(ValueError, match=message) as err:
        check_metric(bad, 4)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="positive number"):
        shrunk_whitening(torch.eye(3), 0.0)


def protonet():
    torch.manual_seed(0)
    return build(TrainConfig(dataset="digits")).eval()


def digits_episode(n_way=5, k_shot=1):
    return episode_stream(load_dataset("digits").pool("val"), n_way, k_shot, 5, 1, 0)[0]


def test_a_protonet_measures_distances_between_whitened_embeddings_when_it_has_a_metric():
    model, ep = protonet(), digits_episode()
    plain = model.adapt(ep.support_x, ep.support_y, 5)(ep.query_x)
    w = shrunk_whitening(random_covariance(64), 1.0)
    model.whitening = w
    whitened = model.adapt(ep.support_x, ep.support_y, 5)(ep.query_x)
    with torch.no_grad():
        s, q = model.embed(ep.support_x) @ w, model.embed(ep.query_x) @ w
    assert torch.allclose(whitened, proto_logits(q, prototypes(s, ep.support_y, 5)), atol=1e-4)
    assert not torch.allclose(whitened, plain, atol=1e-3)
    assert torch.equal(embedding_function(model)(ep.query_x), model.features(ep.query_x))  # "Why?" reads the same space
    model.whitening = torch.eye(64)
    assert torch.allclose(model.adapt(ep.support_x, ep.support_y, 5)(ep.query_x), plain, atol=1e-4)
    model.whitening = w
    loss_with, loss_without = model.outer_loss(ep), None  # meta-training always measures plain distance
    model.whitening = None
    loss_without = model.outer_loss(ep)
    assert torch.equal(loss_with.loss, loss_without.loss)


def test_the_covariance_is_that_of_the_embeddings_of_each_classs_first_images():
    model, pool = protonet(), load_dataset("digits").pool("train")
    cov = embedding_covariance(model, pool, per_class=3)
    images = torch.cat([pool.class_images(i)[:3] for i in range(len(pool))]).float() / 255
    with torch.no_grad():
        z = model.embed(images).double()
    assert cov.shape == (64, 64) and torch.allclose(cov, torch.cov(z.T), atol=1e-8)


def test_fitting_scores_every_shrinkage_on_the_same_validation_episodes_and_sets_the_best():
    model, data = protonet(), load_dataset("digits")
    fit = fit_metric(model, data.pool("train"), data.pool("val"), shrinkages=(None, 10.0, 1.0, 0.3), episodes=15)
    assert set(fit["fit"]["accuracy"]) == {"5w1s", "5w5s"}  # the validation split has 8 classes
    scores = fit["fit"]["score"]
    best = max(scores.values())
    chosen = fit["fit"]["shrinkage"]
    assert scores["plain" if chosen is None else str(chosen)] == best
    if chosen is None:
        assert fit["metric"] is None and model.whitening is None
    else:
        assert fit["metric"]["shrinkage"] == chosen and torch.equal(model.whitening, fit["metric"]["whitening"])


def test_a_shrinkage_that_changes_nothing_ties_with_plain_distance_and_plain_distance_is_kept():
    model, data = protonet(), load_dataset("digits")
    fit = fit_metric(model, data.pool("train"), data.pool("val"), shapes=((5, 1),), shrinkages=(None, 1e9),
                     episodes=10)
    assert fit["fit"]["score"]["plain"] == fit["fit"]["score"]["1000000000.0"]
    assert fit["fit"]["shrinkage"] is None and fit["metric"] is None and model.whitening is None


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("runs"))


def test_calibrating_a_protonet_fits_its_metric_and_the_checkpoint_carries_it(tiny_run, tmp_path):
    out = tmp_path / "calibrated.pt"
    result = calibrate(tiny_run, episodes=5, device="cpu", out=out, metric_episodes=10)
    json.dumps(result)  # what `calibrate --json` prints: no tensor left in it
    fit = result["metric_fit"]
    assert fit["episodes"] == 10 and set(fit["accuracy"]) == {"5w1s", "5w5s"}
    checkpoint = runs.load_checkpoint(out)
    _, model = runs.load_model(out)
    if fit["shrinkage"] is None:
        assert "metric" not in checkpoint and model.whitening is None
    else:
        assert checkpoint["metric"]["shrinkage"] == fit["shrinkage"]
        assert torch.equal(model.whitening, checkpoint["metric"]["whitening"])
    assert checkpoint["calibration"]["metric_fit"]["shrinkage"] == fit["shrinkage"]
    _, plain = runs.load_model(tiny_run)  # the run itself was not touched: plain distance
    assert plain.whitening is None


def test_a_stored_metric_is_loaded_exported_and_used_and_a_damaged_one_is_refused(tiny_run, tmp_path):
    checkpoint = runs.load_checkpoint(tiny_run / "best.pt")
    w = shrunk_whitening(random_covariance(64, seed=1), 0.5)
    checkpoint["metric"] = {"whitening": w, "shrinkage": 0.5}
    torch.save(checkpoint, tmp_path / "whitened.pt")
    _, model = runs.load_model(tmp_path / "whitened.pt")
    _, plain = runs.load_model(tiny_run)
    ep = digits_episode()
    with torch.no_grad():
        assert not torch.allclose(model.adapt(ep.support_x, ep.support_y, 5)(ep.query_x),
                                  plain.adapt(ep.support_x, ep.support_y, 5)(ep.query_x), atol=1e-3)
    exported = runs.export_model(tmp_path / "whitened.pt", tmp_path / "exported.pt")
    assert exported["metric"] == {"shrinkage": 0.5}  # what `export --json` prints
    assert torch.equal(runs.load_model(tmp_path / "exported.pt")[1].whitening, w)
    checkpoint["metric"] = {"whitening": torch.eye(32), "shrinkage": 0.5}
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad.pt holds a whitening matrix of shape \(32, 32\)"):
        runs.load_model(tmp_path / "bad.pt")


def test_the_calibrate_command_says_which_metric_and_views_it_chose(tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("lab.metric_fit.METRIC_EPISODES", 20)
    assert main(["calibrate", str(tiny_run), "--out", str(tmp_path / "c.pt"), "--episodes", "5",
                 "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    metric = next(line for line in lines if line.startswith("metric: "))
    views = next(line for line in lines if line.startswith("test-time views: "))
    assert "on validation" in metric and "on validation" in views
