"""How fast a gradient-based learner adapts to a task of a shape it was not meta-trained on.

Meta-training fixes one inner learning rate for one task shape (the zoo's: 5-way 1-shot). The step
that suits five support images overshoots on fifty: measured on Omniglot's meta-validation split,
zoo:maml-draw adapts to 10-way 5-shot tasks at 87% with its training rate and at 97% with a third
of it. So the rate of test-time adaptation is a hyper-parameter of each task shape, fitted where
hyper-parameters are fitted, on meta-validation episodes (never on the test split):

- :func:`fit_rate_scales`: for each shape of :data:`FIT_SHAPES`, the factor of :data:`SCALES` on the
  algorithm's own rate (its learned rates, for Meta-SGD) under which the validation episodes are
  answered best.
- :func:`rate_scale`: the factor for a task, that of the same shape when it was fitted, else that
  of the nearest fitted shape (in log ways and log shots); 1 when none was.

A checkpoint keeps the factors under ``"rate_scales"``; :func:`lab.runs.load_model` hands them to the
model.
"""

from __future__ import annotations

import math
import re

SCALES = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02)  # factors tried on the training rate, largest first
FIT_SHAPES = ((5, 1), (5, 5), (10, 1), (10, 5), (20, 1), (20, 5))  # the zoo's table and the Draw page's
FIT_EPISODES = 100
FIT_SEED = 1  # not the calibration's episodes (seed 0), which then fit the temperature under these rates
_KEY = re.compile(r"^([1-9][0-9]{0,3})w([1-9][0-9]{0,3})s$")


def shape_key(n_way: int, k_shot: int) -> str:
    return f"{n_way}w{k_shot}s"


def check_rate_scales(values, where: str = "the checkpoint") -> dict[str, float]:
    """``values`` as a dict of shape keys ("10w5s") to finite positive factors, or a one-line ValueError."""
    if not isinstance(values, dict):
        raise ValueError(f"{where} holds rate_scales that are not a table of task shapes")
    out = {}
    for key, value in values.items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise ValueError(f"{where} holds a rate scale for {key!r}, which is not a task shape such as '10w5s'")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0 < value <= 10:
            raise ValueError(f"{where} holds the rate scale {value!r} for {key}: it must be a number in (0, 10]")
        out[key] = float(value)
    return out


def rate_scale(scales: dict[str, float], n_way: int, k_shot: int) -> float:
    """The factor on the adaptation rate for an ``n_way``-way ``k_shot``-shot task (see the module)."""
    if not scales:
        return 1.0
    exact = scales.get(shape_key(n_way, k_shot))
    if exact is not None:
        return exact

    def distance(key: str) -> tuple[float, str]:
        way, shot = (int(g) for g in _KEY.match(key).groups())
        return abs(math.log(way / n_way)) + abs(math.log(shot / k_shot)), key

    return scales[min(scales, key=distance)]


def adapts_by_rate(model) -> bool:
    """Whether ``model`` adapts by gradient steps whose rate a factor scales."""
    return bool(getattr(model, "scales_rate", False)) and hasattr(model, "rate_scales")


def fit_rate_scales(model, pool, shapes=FIT_SHAPES, scales=SCALES, n_query: int = 15, episodes: int | None = None,
                    seed: int = FIT_SEED, device="cpu", progress=None) -> dict:
    """Fit the factors of ``model`` (a learner for which :func:`adapts_by_rate`) on ``pool``, its
    meta-validation classes, ``episodes`` (default :data:`FIT_EPISODES`) per shape and factor, and set
    them on the model. Shapes with more ways than the pool has
    classes, or more shots than its classes have images, are left out. Returns ``{"rate_scales":
    {shape: factor}, "accuracy": {shape: {factor: validation accuracy}}, "episodes", "seed"}``;
    ties go to the larger factor, the nearer to meta-training's."""
    from lab.episodes import check_request, episode_stream
    from lab.evaluation import episode_accuracies

    if not adapts_by_rate(model):
        raise ValueError(f"{getattr(model, 'name', type(model).__name__)} does not adapt by a gradient rate")
    episodes = episodes or FIT_EPISODES
    fitted, accuracy = {}, {}
    shapes = [(w, s) for w, s in shapes if _fits(pool, w, s, n_query, check_request)]
    for i, (n_way, k_shot) in enumerate(shapes):
        key = shape_key(n_way, k_shot)
        stream = episode_stream(pool, n_way, k_shot, n_query, episodes, seed)
        accuracy[key] = {}
        for factor in scales:
            model.rate_scales = {key: factor}
            accuracy[key][str(factor)] = float(episode_accuracies(model, stream, device).mean())
        best = max(scales, key=lambda f: (round(accuracy[key][str(f)], 6), f))
        fitted[key] = best
        if progress:
            progress(i + 1, len(shapes))
    model.rate_scales = dict(fitted)
    return {"rate_scales": fitted, "accuracy": accuracy, "episodes": episodes, "seed": seed,
            "scales_tried": list(scales)}


def _fits(pool, n_way: int, k_shot: int, n_query: int, check_request) -> bool:
    try:
        check_request(pool, n_way, k_shot, n_query)
    except ValueError:
        return False
    return True
