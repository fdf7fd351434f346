"""Meta-testing: accuracy over fixed episodes with a 95% confidence interval."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from lab import runs
from lab.clustering import load_source
from lab.data import load_dataset
from lab.device import pick_device
from lab.episodes import Episode, check_request, episode_stream

Progress = Callable[[int, int], None]  # progress(done, total): called as a long computation advances


def mean_ci95(values: Iterable[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% normal confidence interval (1.96 standard errors)."""
    a = np.asarray(list(values), dtype=np.float64)
    if len(a) == 0:
        return float("nan"), float("nan")
    half = 1.96 * a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else float("nan")
    return float(a.mean()), float(half)


def episode_accuracies(model, episodes: list[Episode], device: torch.device | str = "cpu",
                       progress: Progress | None = None) -> np.ndarray:
    """Query accuracy of ``model.adapt`` on each episode, in order; ``progress(done, total)`` after each."""
    model.eval()
    out = np.empty(len(episodes))
    for i, ep in enumerate(episodes):
        ep = ep.to(device)
        predict = model.adapt(ep.support_x, ep.support_y, ep.n_way)
        with torch.no_grad():
            out[i] = (predict(ep.query_x).argmax(-1) == ep.query_y).float().mean().item()
        if progress is not None:
            progress(i + 1, len(episodes))
    return out


def _shifted(progress: Progress | None, before: int, total: int) -> Progress | None:
    """``progress`` for one part of a longer job: ``before`` items already done of ``total`` in all."""
    return None if progress is None else lambda done, _: progress(before + done, total)


def meta_test(model, pool, n_way: int, k_shot: int, n_query: int = 15, episodes: int = 1000, seed: int = 0,
              device: torch.device | str = "cpu", progress: Progress | None = None) -> dict:
    """Accuracy ± 95% CI over ``episodes`` episodes drawn from ``pool`` with ``seed``.

    The same (pool, shape, seed) gives the same episodes, so two models can be compared
    pairwise on identical tasks. ``progress(done, total)`` is called after each episode.
    """
    check_request(pool, n_way, k_shot, n_query)
    accs = episode_accuracies(model, episode_stream(pool, n_way, k_shot, n_query, episodes, seed), device, progress)
    accuracy, ci95 = mean_ci95(accs)
    return {
        "accuracy": accuracy,
        "ci95": ci95,
        "episodes": episodes,
        "n_way": n_way,
        "k_shot": k_shot,
        "n_query": n_query,
        "seed": seed,
        "per_episode": accs,
    }


def paired_comparison(accs_a: np.ndarray, accs_b: np.ndarray) -> dict:
    """Mean accuracies of two models on the same episodes, and the mean of their per-episode
    difference (a - b) with its 95% interval: pairing removes the variance the tasks share."""
    if len(accs_a) != len(accs_b):
        raise ValueError(f"paired comparison needs the same episodes: {len(accs_a)} vs {len(accs_b)}")
    diff, diff_ci = mean_ci95(np.asarray(accs_a) - np.asarray(accs_b))
    a, a_ci = mean_ci95(accs_a)
    b, b_ci = mean_ci95(accs_b)
    return {"accuracy_a": a, "ci95_a": a_ci, "accuracy_b": b, "ci95_b": b_ci, "difference": diff,
            "difference_ci95": 0.0 if np.all(np.asarray(accs_a) == np.asarray(accs_b)) else diff_ci,
            "episodes": len(accs_a)}


def compare_models(model_a, model_b, pool, n_way: int, k_shot: int, n_query: int = 15, episodes: int = 1000,
                   seed: int = 0, device: torch.device | str = "cpu", progress: Progress | None = None,
                   pool_b=None) -> dict:
    """Both models on the same ``episodes`` episodes from ``pool``, compared pairwise;
    ``progress(done, 2 * episodes)`` after each episode of either model. ``pool_b``, the same classes
    and members with images prepared as model B needs them, gives B the same tasks in its own images."""
    check_request(pool, n_way, k_shot, n_query)
    stream = episode_stream(pool, n_way, k_shot, n_query, episodes, seed)
    stream_b = stream if pool_b is None else episode_stream(pool_b, n_way, k_shot, n_query, episodes, seed)
    out = paired_comparison(episode_accuracies(model_a, stream, device, _shifted(progress, 0, 2 * episodes)),
                            episode_accuracies(model_b, stream_b, device, _shifted(progress, episodes, 2 * episodes)))
    out.update(n_way=n_way, k_shot=k_shot, n_query=n_query, seed=seed)
    return out


# --------------------------------------------------------------------------- runs


def meta_test_pool(config, dataset: str | None, data_dir: str | None, split: str | None):
    """The pool a run is meta-tested on: its own dataset's test split, or all classes of another."""
    name = dataset or config.dataset
    same = name == config.dataset
    data = load_dataset(name, data_dir or (config.data_dir if same else None), config.split_scheme if same else None,
                        config.strokes)
    split = split or ("test" if same else "all")
    return name, split, data.pool(split)


def evaluate_run(run, *, dataset: str | None = None, data_dir: str | None = None, split: str | None = None,
                 n_way: int | None = None, k_shot: int | None = None, n_query: int = 15, episodes: int = 1000,
                 seed: int = 0, device: str = "auto", record: bool = True, source: str | None = None,
                 folder: str | None = None, progress: Progress | None = None) -> dict:
    """Meta-test a run folder (or checkpoint file) on never-seen classes: accuracy ± 95% CI.

    Defaults: the run's own dataset, test split, N-way and K-shot. ``source`` draws the test
    tasks from a task source of :mod:`lab.clustering` instead (``folder`` joins the mixed one)
    and adds the accuracy per true group; a ``clustered`` run uses its own source unless a
    dataset is asked for. A run folder records the result in its ``evaluations.jsonl``.
    ``progress(done, episodes)`` is called after each episode.
    """
    torch_device = pick_device(device)
    config, model = runs.load_model(run, device=torch_device)
    if source is None and dataset is None and config.algorithm == "clustered":
        source, folder = config.hparams.get("source"), folder or config.hparams.get("folder")
    n_way, k_shot = n_way or config.n_way, k_shot or config.k_shot
    if source:
        result = _meta_test_on_source(model, source, split or "test", data_dir, folder, n_way, k_shot, n_query,
                                      episodes, seed, torch_device, progress, config.strokes)
    else:
        name, split, pool = meta_test_pool(config, dataset, data_dir, split)
        result = meta_test(model, pool, n_way, k_shot, n_query, episodes, seed, torch_device, progress)
        result.pop("per_episode")
        result.update(split=split, dataset=name)
    result["run"] = str(run)
    if record and Path(run).is_dir():
        runs.append_jsonl(Path(run) / "evaluations.jsonl", result)
    return result


def _meta_test_on_source(model, source: str, split: str, data_dir, folder, n_way: int, k_shot: int, n_query: int,
                         episodes: int, seed: int, device, progress: Progress | None = None,
                         strokes: str = "as-drawn") -> dict:
    """:func:`meta_test` on the tasks of a task source, with the accuracy of each true group."""

    tasks = load_source(source, split, data_dir, folder, strokes).sample(episodes, n_way, k_shot, n_query, seed)
    accs = episode_accuracies(model, tasks.episodes, device, progress)
    accuracy, ci95 = mean_ci95(accs)
    groups = np.array(tasks.groups)
    by_group = {}
    for g in tasks.group_names:
        acc, ci = mean_ci95(accs[groups == g])
        by_group[g] = {"episodes": int((groups == g).sum()), "accuracy": acc, "ci95": ci}
    return {"accuracy": accuracy, "ci95": ci95, "episodes": episodes, "n_way": n_way, "k_shot": k_shot,
            "n_query": n_query, "seed": seed, "dataset": source, "source": source, "split": split,
            "by_group": by_group}


def compare_runs(run_dirs: list, *, n_query: int = 15, episodes: int = 600, seed: int = 0,
                 device: str = "auto", progress: Progress | None = None) -> dict:
    """Two or more runs on the same test episodes (the first run's dataset, split, N-way, K-shot).

    Returns each run's accuracy ± 95% CI and, for every other run, its paired difference to the
    first with the interval of that difference. ``progress(done, episodes * len(run_dirs))`` is
    called after each episode of each run.
    """
    if len(run_dirs) < 2:
        raise ValueError("compare needs at least two runs")
    torch_device = pick_device(device)
    loaded = [runs.load_model(r, device=torch_device) for r in run_dirs]
    reference = loaded[0][0]
    name, split, pool = meta_test_pool(reference, None, None, None)
    check_request(pool, reference.n_way, reference.k_shot, n_query)
    streams = {reference.strokes: episode_stream(pool, reference.n_way, reference.k_shot, n_query, episodes, seed)}
    for config, _ in loaded:  # the same tasks, in the images each model is tested on
        if config.strokes not in streams:
            streams[config.strokes] = episode_stream(meta_test_pool(reference.replace(strokes=config.strokes), None,
                                                                    None, None)[2],
                                                     reference.n_way, reference.k_shot, n_query, episodes, seed)
    total = episodes * len(loaded)
    accs = [episode_accuracies(model, streams[config.strokes], torch_device, _shifted(progress, i * episodes, total))
            for i, (config, model) in enumerate(loaded)]
    names = [Path(r).name for r in run_dirs]
    per_run = [{"run": n, "accuracy": mean_ci95(a)[0], "ci95": mean_ci95(a)[1]} for n, a in zip(names, accs)]
    pairs = [{"run_a": names[i], "run_b": names[0], **paired_comparison(accs[i], accs[0])} for i in range(1, len(accs))]
    return {"dataset": name, "split": split, "n_way": reference.n_way, "k_shot": reference.k_shot,
            "n_query": n_query, "episodes": episodes, "seed": seed, "runs": per_run, "pairs": pairs}
