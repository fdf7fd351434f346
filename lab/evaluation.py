"""Meta-testing: accuracy over fixed episodes with a 95% confidence interval."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

from lab.episodes import Episode, check_request, episode_stream


def mean_ci95(values: Iterable[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% normal confidence interval (1.96 standard errors)."""
    a = np.asarray(list(values), dtype=np.float64)
    if len(a) == 0:
        return float("nan"), float("nan")
    half = 1.96 * a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else float("nan")
    return float(a.mean()), float(half)


def episode_accuracies(model, episodes: list[Episode], device: torch.device | str = "cpu") -> np.ndarray:
    """Query accuracy of ``model.adapt`` on each episode, in order."""
    model.eval()
    out = np.empty(len(episodes))
    for i, ep in enumerate(episodes):
        ep = ep.to(device)
        predict = model.adapt(ep.support_x, ep.support_y, ep.n_way)
        with torch.no_grad():
            out[i] = (predict(ep.query_x).argmax(-1) == ep.query_y).float().mean().item()
    return out


def meta_test(model, pool, n_way: int, k_shot: int, n_query: int = 15, episodes: int = 1000, seed: int = 0,
              device: torch.device | str = "cpu") -> dict:
    """Accuracy ± 95% CI over ``episodes`` episodes drawn from ``pool`` with ``seed``.

    The same (pool, shape, seed) gives the same episodes, so two models can be compared
    pairwise on identical tasks.
    """
    check_request(pool, n_way, k_shot, n_query)
    accs = episode_accuracies(model, episode_stream(pool, n_way, k_shot, n_query, episodes, seed), device)
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
                   seed: int = 0, device: torch.device | str = "cpu") -> dict:
    """Both models on the same ``episodes`` episodes from ``pool``, compared pairwise."""
    check_request(pool, n_way, k_shot, n_query)
    stream = episode_stream(pool, n_way, k_shot, n_query, episodes, seed)
    out = paired_comparison(episode_accuracies(model_a, stream, device), episode_accuracies(model_b, stream, device))
    out.update(n_way=n_way, k_shot=k_shot, n_query=n_query, seed=seed)
    return out
