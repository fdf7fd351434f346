"""Long computations the pages wait on report their progress: ``progress(done, total)`` with counts
that grow to the total. On the real digits data and a real (untrained) model."""

import numpy as np
import pytest
import torch

from lab import runs
from lab.clustering import embed_tasks, load_source, scan_k
from lab.experts import untrained_model
from lab.config import TrainConfig
from lab.evaluation import compare_models, compare_runs, episode_accuracies, evaluate_run, meta_test
from lab.episodes import episode_stream


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Calls(list):
    """A progress callback that remembers how it was called."""

    def __call__(self, done: int, total: int) -> None:
        self.append((done, total))

    def check(self, total: int) -> None:
        assert self, "progress was never called"
        done = [d for d, _ in self]
        assert all(t == total for _, t in self), self
        assert all(b > a for a, b in zip(done, done[1:])), done  # every call further than the one before
        assert done[-1] == total and done[0] >= 1


@pytest.fixture(scope="module")
def model():
    return untrained_model()


@pytest.fixture(scope="module")
def pool(digits):
    return digits.pool("test")


def test_episode_accuracies_reports_each_episode_and_gives_the_same_accuracies(model, pool):
    episodes = episode_stream(pool, 5, 1, 3, 12, 0)
    calls = Calls()
    with_progress = episode_accuracies(model, episodes, progress=calls)
    calls.check(12)
    np.testing.assert_array_equal(with_progress, episode_accuracies(model, episodes))


def test_meta_test_and_compare_models_report_up_to_every_episode_they_run(model, pool):
    calls = Calls()
    meta_test(model, pool, 5, 1, 3, episodes=10, progress=calls)
    calls.check(10)
    calls = Calls()
    compare_models(model, untrained_model(seed=1), pool, 5, 1, 3, episodes=7, progress=calls)
    calls.check(14)  # both models, one after the other


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("progress-runs")
    out = []
    for seed in (0, 1):
        config = TrainConfig(dataset="digits", n_query=3, meta_batch=1, steps=1, val_every=1, val_episodes=2, seed=seed)
        run_dir = runs.create_run(base, config, f"run-{seed}")
        runs.save_checkpoint(run_dir / "best.pt", untrained_model(seed), None, config, step=0)
        out.append(run_dir)
    return out


def test_compare_runs_and_evaluate_run_report_the_episodes_of_every_run(two_runs):
    calls = Calls()
    result = compare_runs(two_runs, n_query=3, episodes=6, device="cpu", progress=calls)
    calls.check(12)
    assert [r["run"] for r in result["runs"]] == ["run-0", "run-1"]
    calls = Calls()
    evaluate_run(two_runs[0], n_query=3, episodes=8, device="cpu", record=False, progress=calls)
    calls.check(8)


def test_embedding_tasks_reports_the_tasks_embedded_chunk_by_chunk(model):
    tasks = load_source("mixed", "test").sample(60, 5, 1, 1, 0)
    calls = Calls()
    with_progress = embed_tasks(model, tasks, progress=calls)
    calls.check(60)
    assert len(calls) > 1  # more than one chunk on the CPU
    np.testing.assert_allclose(with_progress, embed_tasks(model, tasks), rtol=1e-5, atol=1e-6)


def test_the_k_means_scan_reports_each_k():
    features = np.random.default_rng(0).normal(size=(40, 3))
    calls = Calls()
    scan = scan_k(features, range(1, 6), progress=calls)
    calls.check(5)
    assert [r["k"] for r in scan] == [1, 2, 3, 4, 5] and set(scan[0]) == {"k", "inertia", "silhouette", "bic"}
