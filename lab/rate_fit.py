"""Fitting the rates of :mod:`lab.adaptation` on a run's meta-validation classes."""

from __future__ import annotations

from lab import adaptation
from lab.adaptation import FIT_SEED, FIT_SHAPES, SCALES, adapts_by_rate, shape_key
from lab.episodes import can_supply, episode_stream
from lab.evaluation import episode_accuracies


def fit_rate_scales(model, pool, shapes=FIT_SHAPES, scales=SCALES, n_query: int = 15, episodes: int | None = None,
                    seed: int = FIT_SEED, device="cpu") -> dict:
    """Fit the factors of ``model`` (a learner for which :func:`adapts_by_rate`) on ``pool``, its
    meta-validation classes, ``episodes`` (default :data:`lab.adaptation.FIT_EPISODES`) per shape and factor, and set
    them on the model. Shapes with more ways than the pool has
    classes, or more shots than its classes have images, are left out. Returns ``{"rate_scales":
    {shape: factor}, "accuracy": {shape: {factor: validation accuracy}}, "episodes", "seed"}``;
    ties go to the larger factor, the nearer to meta-training's."""
    if not adapts_by_rate(model):
        raise ValueError(f"{getattr(model, 'name', type(model).__name__)} does not adapt by a gradient rate")
    episodes = episodes or adaptation.FIT_EPISODES
    fitted, accuracy = {}, {}
    shapes = [(w, s) for w, s in shapes if can_supply(pool, w, s, n_query)]
    for n_way, k_shot in shapes:
        key = shape_key(n_way, k_shot)
        stream = episode_stream(pool, n_way, k_shot, n_query, episodes, seed)
        accuracy[key] = {}
        for factor in scales:
            model.rate_scales = {key: factor}
            accuracy[key][str(factor)] = float(episode_accuracies(model, stream, device).mean())
        best = max(scales, key=lambda f: (round(accuracy[key][str(f)], 6), f))
        fitted[key] = best
    model.rate_scales = dict(fitted)
    return {"rate_scales": fitted, "accuracy": accuracy, "episodes": episodes, "seed": seed,
            "scales_tried": list(scales)}

