"""Test-time views of a Prototypical Network: the views themselves, the model averaging over them, their
fitting on meta-validation, and their life in a checkpoint (stored, loaded, exported, refused when damaged)."""

import json

import pytest
import torch

from conftest import train_tiny
from lab import runs
from lab.algorithms import build
from lab.calibration import calibrate
from lab.config import TrainConfig
from lab.data import load_dataset
from lab.episodes import episode_stream
from lab.explain import embedding_function
from lab.metric import shrunk_whitening
from lab.metric_fit import fit_views
from lab.models import proto_logits, prototypes
from lab.views import VIEW_SETS, VIEWS, check_views, set_name, with_views

TURNS_AND_SIZES = VIEW_SETS["turns and sizes"]


def bar():
    """A bright horizontal bar from the centre to the right, on dark."""
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 14, 14:26] = 1.0
    return x


def test_each_view_turns_or_resizes_the_drawing_as_named():
    rows = {name: (VIEWS[name](bar())[0, 0, :, 24] > 0.2).nonzero().flatten().tolist()
            for name in ("turned left", "turned right")}
    assert max(rows["turned left"]) < 14 < min(rows["turned right"])  # the bar's end goes up or down
    length = {name: int((VIEWS[name](bar())[0, 0, 14] > 0.2).sum()) for name in ("larger", "smaller")}
    assert length["larger"] > 12 > length["smaller"]


def test_with_views_stacks_the_images_then_each_view_keeping_any_leading_dimensions():
    x = torch.rand(2, 3, 1, 28, 28)
    out = with_views(x, TURNS_AND_SIZES)
    assert out.shape == (5, 2, 3, 1, 28, 28) and torch.equal(out[0], x)
    assert torch.allclose(out[3].reshape(6, 1, 28, 28), VIEWS["larger"](x.reshape(6, 1, 28, 28)).clamp(0, 1))
    assert out.min() >= 0 and out.max() <= 1
    assert with_views(x, ()).shape == (1, 2, 3, 1, 28, 28)


@pytest.mark.parametrize("bad, message", [
    ("larger", "not a list of names"),
    ([1], "not a list of names"),
    (["larger", "upside down"], r"views the lab does not know: 'upside down' \(known: turned left"),
])
def test_damaged_views_are_refused_in_one_line(bad, message):
    with pytest.raises(ValueError, match=message) as err:
        check_views(bad)
    assert "\n" not in str(err.value)
    assert check_views(["larger"]) == ("larger",) and set_name(TURNS_AND_SIZES) == "turns and sizes"


def protonet():
    torch.manual_seed(0)
    return build(TrainConfig(dataset="digits")).eval()


def digits_episode():
    return episode_stream(load_dataset("digits").pool("val"), 5, 1, 5, 1, 0)[0]


def test_a_protonet_with_views_measures_distances_between_averaged_then_whitened_embeddings():
    model, ep = protonet(), digits_episode()
    plain = model.adapt(ep.support_x, ep.support_y, 5)(ep.query_x)
    w = shrunk_whitening(torch.eye(64) + 0.5, 1.0)
    model.whitening, model.views = w, TURNS_AND_SIZES
    viewed = model.adapt(ep.support_x, ep.support_y, 5)(ep.query_x)
    with torch.no_grad():
        def mean_view(x):
            return torch.stack([model.embed(x)] + [model.embed(VIEWS[v](x).clamp(0, 1)) for v in TURNS_AND_SIZES]).mean(0) @ w
        expected = proto_logits(mean_view(ep.query_x), prototypes(mean_view(ep.support_x), ep.support_y, 5))
    assert torch.allclose(viewed, expected, atol=1e-4) and not torch.allclose(viewed, plain, atol=1e-3)
    assert torch.equal(embedding_function(model)(ep.query_x), model.features(ep.query_x))  # "Why?" reads the same space
    loss_with = model.outer_loss(ep)  # meta-training sees each image once, as it is
    model.views, model.whitening = (), None
    assert torch.equal(loss_with.loss, model.outer_loss(ep).loss)


def test_fitting_scores_every_set_on_the_same_validation_episodes_and_sets_the_best():
    model, pool = protonet(), load_dataset("digits").pool("val")
    model.whitening = shrunk_whitening(torch.eye(64) + 0.5, 1.0)
    fit = fit_views(model, pool, episodes=12)
    assert set(fit["fit"]["accuracy"]) == {"5w1s", "5w5s"}  # the validation split has 8 classes
    scores = fit["fit"]["score"]
    assert set(scores) == set(VIEW_SETS) and scores[fit["fit"]["set"]] == max(scores.values())
    assert model.views == fit["views"] == VIEW_SETS[fit["fit"]["set"]]
    # Scored by hand on the same episodes, each set gives the same accuracy.
    for name, views in VIEW_SETS.items():
        model.views = views
        hits = [(model.adapt(ep.support_x, ep.support_y, 5)(ep.query_x).argmax(-1) == ep.query_y).float().mean().item()
                for ep in _fit_episodes(pool, 5, 1, 12)]
        assert sum(hits) / 12 == pytest.approx(fit["fit"]["accuracy"]["5w1s"][name], abs=1e-6)


def _fit_episodes(pool, n_way, k_shot, episodes):
    import numpy as np

    from lab.adaptation import FIT_SEED
    from lab.episodes import sample_episode
    rng = np.random.default_rng(FIT_SEED)
    return [sample_episode(pool, n_way, k_shot, 15, rng) for _ in range(episodes)]


def test_a_set_that_changes_nothing_ties_with_none_and_none_is_kept():
    model = protonet()
    fit = fit_views(model, load_dataset("digits").pool("val"), shapes=((5, 1),), episodes=6,
                    sets={"none": (), "the same": ()})
    assert fit["fit"]["score"]["none"] == fit["fit"]["score"]["the same"] and fit["fit"]["set"] == "none"
    assert model.views == ()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("runs"))


def test_calibrating_fits_the_views_after_the_metric_and_the_checkpoint_carries_them(tiny_run, tmp_path):
    out = tmp_path / "calibrated.pt"
    result = calibrate(tiny_run, episodes=5, device="cpu", out=out, metric_episodes=10)
    json.dumps(result)
    fit = result["views_fit"]
    assert fit["episodes"] == 10 and result["views"] == list(VIEW_SETS[fit["set"]])
    checkpoint = runs.load_checkpoint(out)
    assert checkpoint.get("views", []) == result["views"] and "views" not in checkpoint["calibration"]
    assert runs.load_model(out)[1].views == tuple(result["views"])
    assert runs.load_model(tiny_run)[1].views == ()  # the run itself was not touched


def test_stored_views_are_loaded_exported_and_used_and_damaged_ones_are_refused(tiny_run, tmp_path):
    checkpoint = runs.load_checkpoint(tiny_run / "best.pt")
    checkpoint["views"] = list(TURNS_AND_SIZES)
    torch.save(checkpoint, tmp_path / "viewed.pt")
    _, model = runs.load_model(tmp_path / "viewed.pt")
    _, plain = runs.load_model(tiny_run)
    ep = digits_episode()
    with torch.no_grad():
        assert not torch.allclose(model.adapt(ep.support_x, ep.support_y, 5)(ep.query_x),
                                  plain.adapt(ep.support_x, ep.support_y, 5)(ep.query_x), atol=1e-4)
    exported = runs.export_model(tmp_path / "viewed.pt", tmp_path / "exported.pt")
    assert exported["views"] == list(TURNS_AND_SIZES)  # what `export --json` prints
    assert runs.load_model(tmp_path / "exported.pt")[1].views == TURNS_AND_SIZES
    checkpoint["views"] = ["larger", "sideways"]
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad.pt names test-time views the lab does not know: 'sideways'"):
        runs.load_model(tmp_path / "bad.pt")

