"""Test-time views: a few fixed, small changes of an image, whose embeddings a Prototypical Network
averages with the image's own on a new task.

One shot of a class is one way of drawing it; the same character turned a little or drawn a little
larger is still that character. Averaging the embeddings of such views, for the
support images (their prototypes) and for the queries alike, keeps what the views share and weighs
down what a single drawing happens to have. The changes are two of the kinds the drawings of
:mod:`lab.augment` vary in, at fixed amounts. Which views a model uses, if any, is fitted on
meta-validation episodes (:func:`lab.metric_fit.fit_views`), never on a test split; a checkpoint keeps
them under ``"views"`` (their names) and :func:`lab.runs.load_model` hands them to the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lab.augment import affine

TURN_DEG = 10.0
RESIZE = 0.1  # a view is this much larger or smaller


def _moved(angle_deg: float = 0.0, scale: float = 1.0) -> Callable:
    def view(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        full = lambda v: torch.full((n,), float(v))  # noqa: E731
        return affine(x, full(math.radians(angle_deg)), full(0.0), full(scale), torch.zeros(n, 2))
    return view


VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "turned left": _moved(angle_deg=TURN_DEG), "turned right": _moved(angle_deg=-TURN_DEG),
    "larger": _moved(scale=1 + RESIZE), "smaller": _moved(scale=1 - RESIZE),
}

# The sets a fit chooses among, plainest first. Each view costs one more embedding of every image.
VIEW_SETS: dict[str, tuple[str, ...]] = {
    "none": (),
    "turns and sizes": ("turned left", "turned right", "larger", "smaller"),
}


def check_views(value, where: str = "the checkpoint") -> tuple[str, ...]:
    """``value`` as a tuple of known view names, or a one-line ValueError."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where} holds test-time views that are not a list of names")
    unknown = [v for v in value if v not in VIEWS]
    if unknown:
        raise ValueError(f"{where} names test-time views the lab does not know: {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(VIEWS)})")
    return tuple(value)


def set_name(views: tuple[str, ...]) -> str:
    """The name of a set of :data:`VIEW_SETS` (or the views joined by commas)."""
    return next((name for name, members in VIEW_SETS.items() if members == tuple(views)), ", ".join(views))


def with_views(x: torch.Tensor, views: tuple[str, ...]) -> torch.Tensor:
    """Images ``(..., n, 1, H, W)`` in [0, 1] -> ``(1 + len(views), ..., n, 1, H, W)``: the images, then each view."""
    flat = x.reshape(-1, *x.shape[-3:])
    return torch.stack([flat] + [VIEWS[v](flat).clamp(0, 1) for v in views]).reshape(1 + len(views), *x.shape)
