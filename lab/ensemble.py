"""Ensembles of Prototypical Networks, joined into one network.

Networks trained apart (another seed, another task stream) err on different images, and averaging
their answers is right more often than any one of them (deep ensembles, Lakshminarayanan, Pritzel &
Blundell 2017; for few-shot classification, Dvornik, Schmid & Mairal 2019). For Prototypical
Networks the average needs no new kind of model: a squared Euclidean distance between joined
embeddings is the sum of the members' squared distances, so a ProtoNet whose encoder is the members'
encoders side by side (``towers``, their embeddings joined and scaled by 1/sqrt(towers)) answers with
the mean of the members' logits. :func:`join_protonets` writes such a checkpoint from trained members;
it loads, adapts, predicts, explains and calibrates like any other (fit its metric and temperature
with ``python -m lab calibrate``: the members' own do not carry over).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lab import runs
from lab.config import TrainConfig


def member_towers(state: dict, towers: int) -> list[dict]:
    """A ProtoNet's state dict -> one state dict per tower, each keyed as a lone Conv4's (``blocks.…``)."""
    prefixes = ["encoder."] + [f"more_towers.{i}." for i in range(towers - 1)]
    return [{k[len(p):]: v for k, v in state.items() if k.startswith(p)} for p in prefixes]


def join_protonets(sources: list, out: str | os.PathLike) -> dict:
    """Join the best checkpoints of ``sources`` (run folders, checkpoint files, ``zoo:NAME``), each a
    Prototypical Network, into one ProtoNet checkpoint at ``out`` whose towers are all of theirs in order.

    The members must read the same strokes and measure the same distance. The joined config is the first
    member's with ``towers`` set; the file records its members. Returns what was written, without weights."""
    if len(sources) < 2:
        raise ValueError("an ensemble joins two or more models")
    towers, configs, members = [], [], []
    for source in sources:
        path = runs.checkpoint_path(source)
        checkpoint = runs.load_checkpoint(path)
        config = TrainConfig.from_dict(checkpoint.get("config") or {})
        if config.algorithm != "protonet":
            raise ValueError(f"{source} is a {config.algorithm} model: only Prototypical Networks join into one")
        runs.load_model(path)  # a member that cannot be built is refused before anything is written
        first = configs[0] if configs else config
        for field, mine, theirs in (("strokes", config.strokes, first.strokes),
                                    ("distance", _distance(config), _distance(first))):
            if mine != theirs:
                raise ValueError(f"{source} has {field} {mine!r}, the first member {theirs!r}: members must agree")
        configs.append(config)
        towers += member_towers(checkpoint["model"], config.hparams.get("towers", 1))
        members.append({"source": str(source), "step": checkpoint.get("step"), "best_val": checkpoint.get("best_val"),
                        "towers": config.hparams.get("towers", 1)})
    if len(towers) > 8:
        raise ValueError(f"the members hold {len(towers)} towers in all; a ProtoNet takes at most 8")
    state = {f"encoder.{k}": v for k, v in towers[0].items()}
    for i, tower in enumerate(towers[1:]):
        state |= {f"more_towers.{i}.{k}": v for k, v in tower.items()}
    config = configs[0].replace(hparams={**configs[0].hparams, "towers": len(towers)})
    payload = {"config": config.to_dict(), "model": {k: v.detach().clone().contiguous() for k, v in state.items()},
               "step": max((m["step"] or 0) for m in members), "best_val": None, "members": members}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    try:
        runs.load_model(tmp)  # what was written builds, or nothing is left behind
    except ValueError:
        tmp.unlink()
        raise
    os.replace(tmp, out)
    return {"out": str(out), "bytes": out.stat().st_size, "towers": len(towers), "members": members,
            "config": payload["config"]}


def _distance(config: TrainConfig) -> str:
    return config.hparams.get("distance", "euclidean")
