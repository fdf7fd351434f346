"""How fast a gradient-based learner adapts to a task of a shape it was not meta-trained on.

Meta-training fixes one inner learning rate for one task shape (the zoo's: 5-way 1-shot). The step
that suits five support images overshoots on fifty: measured on Omniglot's meta-validation split,
zoo:maml-draw adapts to 10-way 5-shot tasks at 87% with its training rate and at 97% with a third
of it. So the rate of test-time adaptation is a hyper-parameter of each task shape, fitted where
hyper-parameters are fitted, on meta-validation episodes (never on the test split):

- :func:`lab.rate_fit.fit_rate_scales`: for each shape of :data:`FIT_SHAPES`, the factor of :data:`SCALES` on the
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
