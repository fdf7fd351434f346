"""Models trained on normalised strokes meet normalised images wherever they are tested."""

import pytest
import torch

from lab import runs
from lab.clustering import sources
from lab.config import TrainConfig
from lab.data import load_dataset
from lab.evaluation import compare_runs, episode_accuracies, evaluate_run, meta_test
from lab.experts import compare_on_source
from lab.training import train


def tiny_run(root, strokes: str):
    config = TrainConfig(dataset="digits", steps=3, val_every=3, val_episodes=5, log_every=1, strokes=strokes)
    run_dir = runs.create_run(root, config, f"tiny-{strokes}")
    list(train(config, run_dir))
    return run_dir


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return tiny_run(root, "normalised"), tiny_run(root, "as-drawn")


def test_a_normalised_model_is_tested_on_normalised_images(two_runs):
    normalised_run, _ = two_runs
    _, model = runs.load_model(normalised_run)
    assert runs.load_model(normalised_run)[0].strokes == "normalised"
    result = evaluate_run(normalised_run, episodes=30, record=False)
    on = meta_test(model, load_dataset("digits", strokes="normalised").pool("test"), 5, 1, 15, 30)["accuracy"]
    off = meta_test(model, load_dataset("digits").pool("test"), 5, 1, 15, 30)["accuracy"]
    assert result["accuracy"] == pytest.approx(on) and on != pytest.approx(off)


def test_a_comparison_gives_each_model_the_same_tasks_in_its_own_images(two_runs):
    result = compare_runs(list(two_runs), episodes=30)
    alone = [evaluate_run(r, episodes=30, record=False)["accuracy"] for r in two_runs]
    assert [r["accuracy"] for r in result["runs"]] == pytest.approx(alone)


def test_task_sources_come_in_the_images_the_model_was_trained_on(two_runs, monkeypatch):
    monkeypatch.setattr(sources, "MIXED", ("digits",))  # the bundled digits alone: no dataset to redraw at length
    drawn, redrawn = (sources.load_source("mixed", "test", strokes=s).sample(20, 5, 1, 15, 0)
                      for s in ("as-drawn", "normalised"))
    assert [e.classes.tolist() for e in drawn.episodes] == [e.classes.tolist() for e in redrawn.episodes]
    assert all(not torch.equal(a.support_x, b.support_x) for a, b in zip(drawn.episodes, redrawn.episodes))
    normalised_run, drawn_run = two_runs
    _, model = runs.load_model(normalised_run)
    on_source = evaluate_run(normalised_run, source="mixed", episodes=20, record=False)
    assert on_source["accuracy"] == pytest.approx(episode_accuracies(model, redrawn.episodes).mean())
    _, other = runs.load_model(drawn_run)
    pair = compare_on_source(model, other, "mixed", 5, 1, 15, 20, strokes="normalised", strokes_b="as-drawn")
    assert pair["accuracy_a"] == pytest.approx(on_source["accuracy"])
    assert pair["accuracy_b"] == pytest.approx(episode_accuracies(other, drawn.episodes).mean())
