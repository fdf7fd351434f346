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
