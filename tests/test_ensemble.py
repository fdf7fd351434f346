"""Prototypical Networks trained apart, joined into one: a ProtoNet of several towers answers with the
mean of its members' logits, and the joined checkpoint loads, calibrates and exports like any other."""

import pytest
import torch

from conftest import train_tiny
from lab import runs
from lab.algorithms import build
from lab.cli import main
from lab.config import TrainConfig
from lab.data import load_dataset
from lab.ensemble import join_protonets, member_towers
from lab.episodes import episode_stream


def episode(n_way=5, k_shot=2):
    return episode_stream(load_dataset("digits").pool("val"), n_way, k_shot, 5, 1, 0)[0]


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Three tiny ProtoNet runs on the digits from three seeds, and a MAML run."""
    folder = tmp_path_factory.mktemp("runs")
    out = {name: train_tiny(folder, name, steps=2, val_every=2, val_episodes=3, seed=seed)
           for name, seed in (("a", 0), ("b", 1), ("c", 2))}
    out["maml"] = train_tiny(folder, "maml", algorithm="maml", steps=1, val_every=1, val_episodes=2,
                             hparams={"inner_steps": 1})
    return out


def test_a_protonet_of_several_towers_answers_with_the_mean_of_their_logits():
    torch.manual_seed(0)
    joined = build(TrainConfig(dataset="digits", hparams={"towers": 3})).eval()
    singles = []
    for tower in member_towers(joined.state_dict(), 3):
        single = build(TrainConfig(dataset="digits")).eval()
        single.encoder.load_state_dict(tower)
        singles.append(single)
    ep = episode()
    logits = joined.adapt(ep.support_x, ep.support_y, 5)(ep.query_x)
    mean = torch.stack([m.adapt(ep.support_x, ep.support_y, 5)(ep.query_x) for m in singles]).mean(0)
    assert joined.embedding_dim == 192
    assert torch.allclose(logits, mean, rtol=1e-4, atol=1e-4)


def test_one_tower_keeps_the_checkpoints_of_before():
    state = build(TrainConfig(dataset="digits")).state_dict()
    assert all(k.startswith("encoder.") for k in state)
    old = runs.load_checkpoint(runs.DEFAULT_MODEL)["model"]
    assert set(old) == set(state)


def test_joined_members_answer_as_their_mean_and_the_file_records_them(members, tmp_path):
    result = join_protonets([members["a"], members["b"], members["c"]], tmp_path / "joined.pt")
    assert result["towers"] == 3 and [m["source"] for m in result["members"]] == [str(members[k]) for k in "abc"]
    config, joined = runs.load_model(tmp_path / "joined.pt")
    assert config.hparams["towers"] == 3 and config.algorithm == "protonet"
    ep = episode()
    with torch.no_grad():
        mean = torch.stack([runs.load_model(members[k])[1].adapt(ep.support_x, ep.support_y, 5)(ep.query_x)
                            for k in "abc"]).mean(0)
        assert torch.allclose(joined.adapt(ep.support_x, ep.support_y, 5)(ep.query_x), mean, rtol=1e-4, atol=1e-4)
    # a joined model joins again, tower by tower
    again = join_protonets([tmp_path / "joined.pt", members["a"]], tmp_path / "four.pt")
    assert again["towers"] == 4


def test_only_agreeing_protonets_join_and_a_refusal_writes_nothing(members, tmp_path):
    out = tmp_path / "joined.pt"
    with pytest.raises(ValueError, match="two or more"):
        join_protonets([members["a"]], out)
    with pytest.raises(ValueError, match="is a maml model: only Prototypical Networks join"):
        join_protonets([members["a"], members["maml"]], out)
    other = runs.load_checkpoint(members["b"] / "best.pt")
    other["config"]["strokes"] = "normalised"
    torch.save(other, tmp_path / "redrawn.pt")
    with pytest.raises(ValueError, match="has strokes 'normalised', the first member 'as-drawn'"):
        join_protonets([members["a"], tmp_path / "redrawn.pt"], out)
    with pytest.raises(ValueError, match="no checkpoint|cannot be read"):
        join_protonets([members["a"], tmp_path / "missing.pt"], out)
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_the_ensemble_command_joins_and_the_joined_model_calibrates_like_any(members, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("lab.metric_fit.METRIC_EPISODES", 20)
    out = tmp_path / "pair.pt"
    assert main(["ensemble", str(members["a"]), str(members["b"]), "--out", str(out)]) == 0
    assert "2 towers from 2 models" in capsys.readouterr().out
    assert main(["calibrate", str(out), "--episodes", "5", "--device", "cpu"]) == 0
    checkpoint = runs.load_checkpoint(out)
    assert checkpoint["temperature"] > 0 and checkpoint["calibration"]["metric_fit"]["episodes"] > 0
    if "metric" in checkpoint:
        assert checkpoint["metric"]["whitening"].shape == (128, 128)
    _, model = runs.load_model(out)
    assert model.embedding_dim == 128
