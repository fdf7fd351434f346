"""Lake's one-shot protocol: within-alphabet, 20-way, drawer-disjoint and seeded runs."""

import numpy as np
import pytest
import torch

from lab.config import TrainConfig
from lab.data import omniglot_drawers
from lab.lake import check_qualifies, lake_error, lake_runs

from conftest import require


@pytest.fixture(scope="module")
def runs_seed0():
    require("omniglot-py")
    return lake_runs(seed=0)


def test_each_run_is_twenty_characters_of_one_evaluation_alphabet(runs_seed0):
    from lab.data import load_dataset

    evaluation = set(load_dataset("omniglot", scheme="background").pool("test").class_groups)
    assert len(evaluation) == 20
    assert len(runs_seed0) == 20
    for run in runs_seed0:
        assert len(set(run.characters)) == 20 and all(c.startswith(run.alphabet + "/") for c in run.characters)
        assert run.episode.support_x.shape == (20, 1, 28, 28) and run.episode.query_x.shape == (20, 1, 28, 28)
        assert torch.equal(run.episode.support_y, torch.arange(20)) and torch.equal(run.episode.query_y, torch.arange(20))
        assert run.alphabet in evaluation
    assert len({r.alphabet for r in runs_seed0}) == 20  # twenty runs, twenty different alphabets


def test_support_and_queries_come_from_two_different_drawers(runs_seed0):
    for run in runs_seed0:
        assert run.support_drawer != run.query_drawer and 1 <= min(run.support_drawer, run.query_drawer)
        assert not torch.equal(run.episode.support_x, run.episode.query_x)


def test_drawers_are_read_from_the_file_names_in_image_order(omniglot):
    drawers = omniglot_drawers()
    assert len(drawers) == len(omniglot.images) and set(np.unique(drawers)) == set(range(1, 21))


def test_the_runs_are_a_function_of_the_seed(runs_seed0):
    again, other = lake_runs(seed=0), lake_runs(seed=1)
    assert [(r.alphabet, r.support_drawer, r.query_drawer, r.characters) for r in again] == \
        [(r.alphabet, r.support_drawer, r.query_drawer, r.characters) for r in runs_seed0]
    assert all(torch.equal(a.episode.query_x, b.episode.query_x) for a, b in zip(again, runs_seed0))
    assert [r.characters for r in other] != [r.characters for r in runs_seed0]


def test_a_model_that_saw_evaluation_alphabets_is_refused():
    check_qualifies(TrainConfig(dataset="omniglot", split_scheme="background"))
    with pytest.raises(ValueError, match="background alphabets only"):
        check_qualifies(TrainConfig(dataset="omniglot", split_scheme="vinyals"))
    with pytest.raises(ValueError, match="background alphabets only"):
        check_qualifies(TrainConfig(dataset="mnist"))


def test_an_untrained_encoder_errs_far_more_than_a_trained_one_would(runs_seed0):
    from lab.algorithms import build

    model = build(TrainConfig(dataset="omniglot", split_scheme="background", n_way=20))
    result = lake_error(model, runs=4)
    assert result["runs"] == 4 and len(result["per_run"]) == 4
    assert 0.0 <= result["error"] <= 1.0 and result["error"] > 0.2  # chance is 95% error; raw pixels do better
    assert result["error"] == pytest.approx(np.mean([r["error"] for r in result["per_run"]]))
