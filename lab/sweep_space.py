"""The search space of a sweep: which hyper-parameters and run settings are searched, over what.

A dimension is a plain dict, stored as JSON in the study: ``{"name", "target", "kind", ...}`` with
``target`` "hparams" (a field of the algorithm's ``Hparams``) or "config" (a ``TrainConfig`` field),
``kind`` "float" or "int" (with ``low``, ``high``, ``log``) or "choice" (with ``choices``).

On the command line a dimension is written ``NAME`` (the range derived from the field's default),
``NAME=LOW:HIGH`` (log scale for learning rates, else linear; ``:log`` or ``:linear`` says which)
or ``NAME=A,B,C`` (choices). :func:`check_space` refuses, with the reason, anything that cannot be
searched, before a study is written.
"""

from __future__ import annotations

import dataclasses
import json
import math

from lab.config import LR_SCHEDULES, TrainConfig, hparam_fields
from lab.fields import field_comments

# The run settings a sweep may search. The task a trial is scored on (n_way, k_shot, the dataset and
# its split) stays fixed, so every trial's validation accuracy measures the same thing.
SETTINGS = {"meta_lr": "float", "train_way": "int", "n_query": "int", "meta_batch": "int", "lr_schedule": "choice"}
SETTING_CHOICES = {"lr_schedule": LR_SCHEDULES}
MACHINE = ("vectorize", "precision")  # how a batch is computed, not what is learned


def is_rate(name: str) -> bool:
    """Learning rates are searched on a log scale."""
    return name == "lr" or name.endswith("_lr") or name.endswith("rate")


def searchable(algorithm: str) -> dict[str, dict]:
    """``{name: {"target", "kind", "default", "choices", "help"}}``: what a sweep of ``algorithm`` can search."""
    out = {}
    for f in hparam_fields(algorithm):
        if f.name in MACHINE or (f.kind in ("str", "json") and not f.choices):
            continue
        kind = "choice" if f.choices or f.kind == "bool" else f.kind
        choices = list(f.choices) if f.choices else [False, True] if f.kind == "bool" else []
        out[f.name] = {"target": "hparams", "kind": kind, "default": f.default, "choices": choices, "help": f.help}
    defaults, comments = TrainConfig(), field_comments(TrainConfig)
    for name, kind in SETTINGS.items():
        out.setdefault(name, {"target": "config", "kind": kind, "default": getattr(defaults, name),
                              "choices": list(SETTING_CHOICES.get(name, ())), "help": comments.get(name, "")})
    return out


def default_dimension(name: str, field: dict, base: TrainConfig) -> dict:
    """The range a field is searched over when only its name is given: around its default value."""
    dim = {"name": name, "target": field["target"], "kind": field["kind"]}
    if field["kind"] == "choice":
        return {**dim, "choices": list(field["choices"])}
    default = (base.hparams if field["target"] == "hparams" else base.to_dict()).get(name)
    if default is None:  # an optional count (train_way: the task's way; test steps: the training steps)
        default = base.n_way if name == "train_way" else base.hparams.get("inner_steps", 1)
    if field["kind"] == "int":
        return {**dim, "low": max(1, default // 2), "high": max(2 * default, default + 2), "log": False}
    log = is_rate(name)
    low, high = (default / 10, default * 10) if log else (default / 2, default * 2)
    return {**dim, "low": float(f"{low:.3g}"), "high": float(f"{high:.3g}"), "log": log}


def _value(text: str):
    """A number, true/false or a bare word, as written on the command line."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_dimension(spec: str, algorithm: str, base: TrainConfig) -> dict:
    """``NAME``, ``NAME=LOW:HIGH[:log|:linear]`` or ``NAME=A,B,C`` as a dimension (not yet checked)."""
    name, _, rest = spec.partition("=")
    name, rest = name.strip(), rest.strip()
    fields = searchable(algorithm)
    if name not in fields:
        raise ValueError(_unknown(name, algorithm, fields))
    field = fields[name]
    if not rest:
        if "=" in spec:
            raise ValueError(f"{name}: the range is empty; write {name}=LOW:HIGH or {name}=A,B,C")
        return default_dimension(name, field, base)
    dim = {"name": name, "target": field["target"], "kind": field["kind"]}
    if ":" in rest:
        parts = rest.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("log", "linear")):
            raise ValueError(f"{name}: write a range as LOW:HIGH, LOW:HIGH:log or LOW:HIGH:linear, not {rest!r}")
        if field["kind"] == "choice":
            raise ValueError(f"{name} takes one of {_listed(field['choices'])}: write {name}=A,B")
        log = parts[2] == "log" if len(parts) == 3 else is_rate(name) and field["kind"] == "float"
        return {**dim, "low": _value(parts[0]), "high": _value(parts[1]), "log": log}
    return {**dim, "kind": "choice", "choices": [_value(v.strip()) for v in rest.split(",") if v.strip()]}


def _listed(values) -> str:
    return ", ".join(json.dumps(v) if not isinstance(v, str) else v for v in values)


def _unknown(name: str, algorithm: str, fields: dict) -> str:
    if name in MACHINE:
        return f"{name} is a machine setting, not a hyper-parameter: fix it instead of searching it"
    if name in {f.name for f in dataclasses.fields(TrainConfig)}:
        return f"{name} is not searched (it defines the task or the budget): fix it instead"
    return f"unknown hyper-parameter or setting {name!r} for {algorithm}; a sweep can search {', '.join(fields)}"


def with_values(base: TrainConfig, values: dict, space: list[dict]) -> TrainConfig:
    """``base`` with each searched value put where it belongs (a hyper-parameter or a setting)."""
    targets = {d["name"]: d["target"] for d in space}
    settings = {k: v for k, v in values.items() if targets.get(k) == "config"}
    hparams = {**base.hparams, **{k: v for k, v in values.items() if targets.get(k) == "hparams"}}
    return base.replace(**settings, hparams=hparams)


def _check_range(dim: dict) -> None:
    name, low, high = dim["name"], dim["low"], dim["high"]
    for end in (low, high):
        if not isinstance(end, (int, float)) or isinstance(end, bool) or not math.isfinite(end):
            raise ValueError(f"{name}: the range ends must be numbers, not {end!r}")
    if dim["kind"] == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise ValueError(f"{name}: a count is searched over whole numbers, not {low}:{high}")
    if low > high:
        raise ValueError(f"{name}: the range {low}:{high} is backwards (low > high)")
    if low == high:
        raise ValueError(f"{name}: the range {low}:{high} is empty (one value): fix {name} instead")
    if dim["log"] and low <= 0:
        raise ValueError(f"{name}: a log-scale range must start above 0, not at {low}")


def check_space(space: list[dict], algorithm: str, base: TrainConfig) -> list[dict]:
    """The dimensions, checked and normalised; ``ValueError`` names the first one that cannot be searched.

    Every end of a range and every choice must make a valid run config, so a trial never fails on
    a value its own dataclass refuses.
    """
    if not space:
        raise ValueError("a sweep needs at least one hyper-parameter or setting to search (--param NAME=LOW:HIGH)")
    fields, seen, out = searchable(algorithm), set(), []
    for dim in space:
        name = dim.get("name")
        if name not in fields:
            raise ValueError(_unknown(str(name), algorithm, fields))
        if name in seen:
            raise ValueError(f"{name} is searched twice")
        seen.add(name)
        dim = {**dim, "target": fields[name]["target"]}
        if dim["kind"] == "choice":
            dim["choices"] = list(dict.fromkeys(dim.get("choices") or []))
            if len(dim["choices"]) < 2:
                raise ValueError(f"{name}: give two choices or more, not {_listed(dim['choices']) or 'none'}")
            ends = dim["choices"]
        else:
            dim = {**dim, "log": bool(dim.get("log"))}
            _check_range(dim)
            if dim["kind"] == "int":
                dim.update(low=int(dim["low"]), high=int(dim["high"]))
            else:
                dim.update(low=float(dim["low"]), high=float(dim["high"]))
            ends = [dim["low"], dim["high"]]
        for value in ends:
            try:
                with_values(base, {name: value}, [dim])
            except (ValueError, TypeError) as err:
                raise ValueError(f"{name}={value!r} cannot be trained: {err}") from None
        out.append(dim)
    return out


def suggest(trial, space: list[dict]) -> dict:
    """The values an Optuna trial draws for each dimension."""
    values = {}
    for dim in space:
        if dim["kind"] == "choice":
            values[dim["name"]] = trial.suggest_categorical(dim["name"], dim["choices"])
        elif dim["kind"] == "int":
            values[dim["name"]] = trial.suggest_int(dim["name"], dim["low"], dim["high"], log=dim["log"])
        else:
            values[dim["name"]] = trial.suggest_float(dim["name"], dim["low"], dim["high"], log=dim["log"])
    return values


def check_point(values: dict, space: list[dict]) -> dict:
    """A point to try first (``{name: value}``), each value inside its dimension."""
    dims = {d["name"]: d for d in space}
    for name, value in values.items():
        dim = dims.get(name)
        if dim is None:
            raise ValueError(f"{name} is not searched by this sweep; it searches {', '.join(dims)}")
        inside = value in dim["choices"] if dim["kind"] == "choice" else (
            isinstance(value, (int, float)) and not isinstance(value, bool) and dim["low"] <= value <= dim["high"])
        if not inside:
            where = _listed(dim["choices"]) if dim["kind"] == "choice" else f"{dim['low']}:{dim['high']}"
            raise ValueError(f"{name}={value!r} is outside the searched {where}")
    return values


def describe(dim: dict) -> str:
    """``inner_lr in 0.01:1 (log)``, ``lr_schedule in constant, cosine``."""
    if dim["kind"] == "choice":
        return f"{dim['name']} in {_listed(dim['choices'])}"
    return f"{dim['name']} in {dim['low']:g}:{dim['high']:g}" + (" (log)" if dim["log"] else "")
