"""Helpers every command shares."""

from __future__ import annotations

import json
import sys

from lab.data import DatasetUnavailable


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=float))


def progress_bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, disable=None)


def on_main(world, make):
    """``make()`` on rank 0, its value (or its ValueError) shared with every process."""
    from lab.distributed import broadcast_object

    try:
        outcome = ("ok", make()) if world.is_main else None
    except (ValueError, DatasetUnavailable) as err:
        outcome = ("error", str(err))
    kind, value = broadcast_object(outcome, world)
    if kind == "error":
        raise ValueError(value)
    return value


def describe_metric(fit: dict) -> str:
    """One line on the metric :func:`lab.metric_fit.fit_metric` chose, with its validation score against plain distance."""
    score = fit["score"]
    if fit["shrinkage"] is None:
        return f"metric: plain distance ({100 * score['plain']:.2f}% on validation; no shrinkage did better)"
    return (f"metric: whitened by meta-training's covariance, shrinkage {fit['shrinkage']:g} "
            f"({100 * score[str(fit['shrinkage'])]:.2f}% on validation against {100 * score['plain']:.2f}% plain)")


def describe_views(fit: dict) -> str:
    """One line on the test-time views :func:`lab.metric_fit.fit_views` chose, with their validation score."""
    score = fit["score"]
    if fit["set"] == "none":
        return f"test-time views: none ({100 * score['none']:.2f}% on validation; no set of views did better)"
    return (f"test-time views: {fit['set']} ({100 * score[fit['set']]:.2f}% on validation against "
            f"{100 * score['none']:.2f}% without)")
