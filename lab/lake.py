"""Lake's one-shot protocol (Lake, Salakhutdinov & Tenenbaum, Science 2015).

Twenty runs of 20-way *within-alphabet* one-shot classification on Omniglot's evaluation alphabets:
each run takes 20 characters of one alphabet, one drawer's image of each as the support set and
another drawer's image of each as the queries, so every query must be told apart from the other
characters of its own alphabet, drawn by someone else. The score is the mean error rate over the
runs. Published errors: humans 4.5%, Bayesian Program Learning 3.3%, Siamese nets 8.0%,
Prototypical Networks 13.7%; trained on a minimal background set (``small1``): ProtoNet 30.1%,
BPL 4.2%.

The models scored this way must not have seen an evaluation alphabet: only the ``background``,
``small1`` and ``small2`` schemes of Omniglot qualify (the Vinyals split trains on some
evaluation alphabets' characters).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from lab.data import load_dataset, omniglot_drawers
from lab.episodes import Episode
from lab.evaluation import episode_accuracies, mean_ci95

WAYS = 20
RUNS = 20
QUALIFYING_SCHEMES = ("background", "small1", "small2")


class LakeRun(NamedTuple):
    """One run: its alphabet, the two drawers, and the episode (support by one, queries by the other)."""

    alphabet: str
    support_drawer: int
    query_drawer: int
    characters: tuple[str, ...]
    episode: Episode


def lake_runs(runs: int = RUNS, seed: int = 0, data_dir=None, strokes: str = "as-drawn") -> list[LakeRun]:
    """The protocol's runs: a pure function of ``runs`` and ``seed``.

    Run ``r`` takes the ``r``-th evaluation alphabet of a seeded order (a new order every 20
    runs), 20 of its characters and two different drawers, all chosen by the seeded generator.
    """
    data = load_dataset("omniglot", data_dir, "background", strokes)
    pool = data.pool("test")  # the evaluation alphabets, unrotated
    drawers = omniglot_drawers(data_dir)
    by_alphabet: dict[str, list[int]] = {}
    for i, group in enumerate(pool.class_groups):
        by_alphabet.setdefault(group, []).append(i)
    alphabets = sorted(a for a, classes in by_alphabet.items() if len(classes) >= WAYS)
    if not alphabets:
        raise ValueError(f"no evaluation alphabet has {WAYS} characters")
    rng = np.random.default_rng(seed)
    order: list[str] = []
    out = []
    for _ in range(runs):
        if not order:
            order = [alphabets[i] for i in rng.permutation(len(alphabets))]
        alphabet = order.pop(0)
        classes = rng.choice(by_alphabet[alphabet], size=WAYS, replace=False)
        shared = set.intersection(*(set(drawers[pool.members[c]].tolist()) for c in classes))
        first, second = rng.choice(sorted(shared), size=2, replace=False)
        pick = lambda c, d: np.flatnonzero(drawers[pool.members[c]] == d)[:1]  # noqa: E731
        support = torch.cat([pool.class_images(int(c), pick(c, first)) for c in classes]).float().div_(255.0)
        query = torch.cat([pool.class_images(int(c), pick(c, second)) for c in classes]).float().div_(255.0)
        labels = torch.arange(WAYS)
        episode = Episode(support, labels, query, labels.clone(), torch.from_numpy(classes.astype(np.int64)))
        out.append(LakeRun(alphabet, int(first), int(second), tuple(pool.class_names[c] for c in classes), episode))
    return out


def check_qualifies(config) -> None:
    """Refuse a model that may have seen the evaluation alphabets: the protocol would flatter it."""
    scheme = config.split_scheme or "vinyals"
    if config.dataset != "omniglot" or scheme not in QUALIFYING_SCHEMES:
        raise ValueError(
            f"Lake's protocol scores models trained on Omniglot's background alphabets only "
            f"({', '.join(QUALIFYING_SCHEMES)} schemes); this one was trained on {config.dataset}:{scheme}")


def lake_error(model, runs: int = RUNS, seed: int = 0, data_dir=None, device="cpu", strokes: str = "as-drawn") -> dict:
    """Mean error rate over the protocol's runs, with its 95% interval and every run's error."""
    chosen = lake_runs(runs, seed, data_dir, strokes)
    accs = episode_accuracies(model, [r.episode for r in chosen], device)
    errors = 1.0 - accs
    mean, ci95 = mean_ci95(errors)
    return {
        "protocol": "lake",
        "error": mean,
        "ci95": ci95,
        "runs": runs,
        "n_way": WAYS,
        "k_shot": 1,
        "seed": seed,
        "per_run": [{"alphabet": r.alphabet, "support_drawer": r.support_drawer, "query_drawer": r.query_drawer,
                     "error": float(e)} for r, e in zip(chosen, errors)],
    }
