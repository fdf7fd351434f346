"""Hyper-parameter sweeps: an Optuna study whose trials are ordinary runs of the run store.

A sweep searches one algorithm's hyper-parameters and some run settings (:mod:`lab.sweep_space`).
Each trial creates a run folder (``<sweep>-t007``), trains it with :func:`lab.training.train` and
scores it by its best meta-validation accuracy; the pruner sees every meta-validation as it is
measured, and a pruned trial's run is stopped gracefully. The test split is never used to choose:
:func:`test_best` meta-tests the chosen trial once and records it in the study.

The study lives in an Optuna RDB storage, by default ``<runs_dir>/sweeps.db`` (SQLite), so several
worker processes share one sweep and a sweep outlives any of them. Its definition is the study's
user attribute ``sweep``. Each worker takes a trial only while the study holds fewer than
``n_trials`` complete, pruned or running trials, counted under a lock file beside the runs
(``<runs_dir>/sweeps/<name>/``, which also holds the workers' logs), so N workers never overshoot.
A worker that dies leaves a running trial whose heartbeat stops; the next worker to look marks it
failed and re-queues its parameters (Optuna's ``RetryFailedTrialCallback``).
"""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from lab import jobs, runs
from lab.algorithms import REGISTRY
from lab.config import TrainConfig, hparam_fields
from lab.device import pick_device
from lab.evaluation import evaluate_run
from lab.sweep_storage import (ATTR, default_storage, free_run_name, list_sweeps, load,  # noqa: F401
                               open_storage, runs_folder, storage_url, sweep_folder)
from lab.sweep_space import check_point, check_space, describe as describe_dimension, parse_dimension, with_values
from lab.training import check_config

TEST_ATTR, LONGER_ATTR = "test", "longer_runs"
PRUNERS = ("median", "halving", "none")
HEARTBEAT_S = 10  # seconds between a running trial's heartbeats; three missed ones fail the trial
UNLIMITED_STEPS = 1_000_000  # a trial with a time budget only



# --------------------------------------------------------------------------- create


@contextlib.contextmanager
def _quiet():
    """Optuna's log lines held back (a new study announces itself)."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def _base_config(algorithm: str, dataset: str, fixed: dict, minutes: float | None, steps: int | None) -> TrainConfig:
    if algorithm == "clustered":
        raise ValueError("clustered runs fine-tune experts of a base run: sweep the base algorithm instead")
    if algorithm not in REGISTRY:
        raise ValueError(f"algorithm: unknown {algorithm!r}; choose one of {', '.join(REGISTRY)}")
    if not isinstance(fixed, dict):
        raise ValueError("--fixed must be a JSON object of run settings, e.g. '{\"n_way\": 5}'")
    settings = {f for f in TrainConfig.__dataclass_fields__}
    hp_names = {f.name for f in hparam_fields(algorithm)}
    fixed = dict(fixed)
    hparams = dict(fixed.pop("hparams", None) or {})
    for key in list(fixed):
        if key in ("algorithm", "dataset", "steps", "minutes"):
            raise ValueError(f"{key} is set by its own option, not in the fixed settings")
        if key not in settings:
            if key not in hp_names:
                raise ValueError(f"unknown setting {key!r}: the fixed settings take TrainConfig fields "
                                 f"or {algorithm}'s hyper-parameters ({', '.join(sorted(hp_names)) or 'none'})")
            hparams[key] = fixed.pop(key)
    if minutes is None and steps is None:
        raise ValueError("give each trial a budget: minutes per trial, steps per trial, or both")
    if minutes is not None and not minutes > 0:
        raise ValueError(f"minutes per trial must be positive, not {minutes}")
    return TrainConfig(**fixed, algorithm=algorithm, dataset=dataset, hparams=hparams, minutes=minutes,
                       steps=steps if steps is not None else UNLIMITED_STEPS)


def create(name: str, algorithm: str, space: list, *, dataset: str = "digits", fixed: dict | None = None,
           n_trials: int = 12, minutes_per_trial: float | None = None, steps_per_trial: int | None = None,
           pruner: str = "median", heartbeat_s: int = HEARTBEAT_S, try_first: list[dict] | None = None,
           runs_dir=None, storage: str | None = None) -> dict:
    """Check everything, then write the study and its definition; returns the definition.

    ``space`` holds dimensions as written on the command line (``"inner_lr=0.01:1:log"``) or as
    dicts. ``try_first`` points (``{name: value}``) are the first trials, e.g. the defaults.
    Every refusal is a ``ValueError`` (or ``DatasetUnavailable``) raised before anything is written.
    """
    runs.check_name(name)
    if len(name) > 70:
        raise ValueError(f"sweep name {name!r} is too long: at most 70 characters (its runs add a suffix)")
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise ValueError(f"the number of trials must be a positive whole number, not {n_trials!r}")
    if pruner not in PRUNERS:
        raise ValueError(f"pruner must be one of {', '.join(PRUNERS)}, not {pruner!r}")
    if not isinstance(heartbeat_s, int) or heartbeat_s < 1:
        raise ValueError(f"the heartbeat must be a whole number of seconds, at least 1, not {heartbeat_s!r}")
    base = _base_config(algorithm, dataset, fixed or {}, minutes_per_trial, steps_per_trial)
    dims = check_space([parse_dimension(d, algorithm, base) if isinstance(d, str) else d for d in space],
                       algorithm, base)
    points = [check_point(dict(p), dims) for p in (try_first or [])]
    if len(points) > n_trials:
        raise ValueError(f"{len(points)} points to try first, but the sweep has only {n_trials} trials")
    pick_device(base.device)
    check_config(base)
    for dim in dims:  # the episodes' sizes: every end of their range must fit the dataset's splits
        if dim["name"] in ("train_way", "n_query"):
            for end in (dim["low"], dim["high"]) if dim["kind"] != "choice" else dim["choices"]:
                try:
                    check_config(with_values(base, {dim["name"]: end}, dims))
                except ValueError as err:
                    raise ValueError(f"{dim['name']}={end} cannot be trained: {err}") from None

    runs_dir = runs_folder(runs_dir)
    url = storage_url(runs_dir, storage)
    if url == default_storage(runs_dir) and url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    store = open_storage(url)
    if name in optuna.get_all_study_names(store):
        raise ValueError(f"a sweep named {name!r} already exists in {url}")
    definition = {"algorithm": algorithm, "dataset": dataset, "base": base.to_dict(), "space": dims,
                  "n_trials": n_trials, "minutes_per_trial": minutes_per_trial, "steps_per_trial": steps_per_trial,
                  "pruner": pruner, "heartbeat_s": heartbeat_s, "created": time.time(),
                  "objective": "best meta-validation accuracy", "split": "validation"}
    if url.startswith("sqlite:///"):  # readers (the page) never wait for a writer
        with store.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    try:
        with _quiet():
            study = optuna.create_study(storage=store, study_name=name, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        raise ValueError(f"a sweep named {name!r} already exists in {url}") from None
    study.set_user_attr(ATTR, definition)
    for point in points:
        study.enqueue_trial(point)
    return definition


# --------------------------------------------------------------------------- what a sweep holds


def _alive(pid: int, name: str) -> bool:
    """The process is running (not a zombie) and is a worker of this sweep."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return name.encode() in f.read().split(b"\0")
    except (OSError, IndexError):
        return False


def workers(name: str, runs_dir=None) -> list[dict]:
    """The live workers of sweep ``name`` started on this machine (``lab.sweep_workers.launch``)."""
    out = []
    for path in sorted((sweep_folder(runs_dir, name) / "workers").glob("*.json")):
        info = runs.read_json(path, {})
        if info.get("host") == socket.gethostname() and _alive(int(info.get("pid", -1)), name):
            out.append(info)
    return out


def trial_row(trial) -> dict:
    """One trial as plain values: its state, value (validation accuracy), parameters and run."""
    start, end = trial.datetime_start, trial.datetime_complete
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "value": trial.value,
        "params": dict(trial.params),
        # A re-queued trial carries the attributes of the one it retries until a worker takes it.
        "run": trial.user_attrs.get("run") if trial.state != TrialState.WAITING else None,
        "worker": trial.user_attrs.get("worker") if trial.state != TrialState.WAITING else None,
        "reports": len(trial.intermediate_values),
        "last_step": max(trial.intermediate_values, default=None),
        "pruned_at": trial.user_attrs.get("pruned_at"),
        "diverged": trial.user_attrs.get("diverged"),
        "retry_of": trial.system_attrs.get("failed_trial"),
        "started": start.timestamp() if start else None,
        "duration_s": (end - start).total_seconds() if start and end else None,
    }


def status(name: str, runs_dir=None, storage: str | None = None) -> dict:
    """Everything about sweep ``name``: its definition, each trial, counts by state, the best, the workers."""
    study, definition = load(name, runs_dir, storage)
    rows = [trial_row(t) for t in study.get_trials(deepcopy=False)]
    counts = {state.name.lower(): sum(r["state"] == state.name.lower() for r in rows) for state in TrialState}
    finished = counts["complete"] + counts["pruned"]
    complete = [r for r in rows if r["state"] == "complete"]
    top = max(complete, key=lambda r: r["value"], default=None)
    return {
        "name": name, "storage": storage_url(runs_folder(runs_dir), storage), "definition": definition,
        "n_trials": definition["n_trials"], "finished": finished, "counts": counts,
        "done": finished >= definition["n_trials"] and not counts["running"],
        "best": {"trial": top["number"], "value": top["value"], "split": "validation", "params": top["params"],
                 "run": top["run"]} if top else None,
        "workers": [w["pid"] for w in workers(name, runs_dir)],
        "test": study.user_attrs.get(TEST_ATTR), "longer_runs": study.user_attrs.get(LONGER_ATTR, []),
        "trials": rows,
    }


def best(name: str, runs_dir=None, storage: str | None = None) -> dict:
    """The complete trial with the best meta-validation accuracy, with its run's whole config."""
    study, definition = load(name, runs_dir, storage)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise ValueError(f"no trial of {name} has completed yet")
    top = max(complete, key=lambda t: t.value)
    run = top.user_attrs.get("run")
    config = runs.read_json(runs_folder(runs_dir) / run / "config.json") if run else None
    if not config:
        space = definition["space"]
        config = with_values(TrainConfig.from_dict(definition["base"]), top.params, space).to_dict()
    return {"sweep": name, "trial": top.number, "value": top.value, "split": "validation",
            "objective": definition["objective"], "params": dict(top.params), "run": run, "config": config}


def test_best(name: str, episodes: int = 1000, seed: int = 0, runs_dir=None, storage: str | None = None) -> dict:
    """Meta-test the best trial's run on the test split, once: a second call returns the recorded result.

    Refused while trials remain, since the best is not chosen yet; the result is stored in the
    study (``test``) and in the run's ``evaluations.jsonl``.
    """
    study, definition = load(name, runs_dir, storage)
    recorded = study.user_attrs.get(TEST_ATTR)
    if recorded:
        return {**recorded, "already": True}
    state = status(name, runs_dir, storage)
    if not state["done"]:
        raise ValueError(f"{name} has {state['finished']} of {definition['n_trials']} trials finished "
                         f"({state['counts']['running']} running): test the best once every trial has ended")
    chosen = best(name, runs_dir, storage)
    run_dir = runs_folder(runs_dir) / chosen["run"]
    result = evaluate_run(run_dir, split="test", episodes=episodes, seed=seed)
    record = {"trial": chosen["trial"], "run": chosen["run"], "split": "test", "accuracy": result["accuracy"],
              "ci95": result["ci95"], "episodes": episodes, "seed": seed, "dataset": result["dataset"],
              "n_way": result["n_way"], "k_shot": result["k_shot"], "val_accuracy": chosen["value"],
              "tested": time.time()}
    study.set_user_attr(TEST_ATTR, record)
    return {**record, "already": False}


def train_best(name: str, minutes: float, runs_dir=None, storage: str | None = None) -> Path:
    """Start a run of the best trial's config for ``minutes`` in the background; returns its folder."""
    if not isinstance(minutes, (int, float)) or not minutes > 0:
        raise ValueError(f"minutes must be positive, not {minutes!r}")
    study, _ = load(name, runs_dir, storage)
    chosen = best(name, runs_dir, storage)
    config = TrainConfig.from_dict(chosen["config"]).replace(minutes=float(minutes), steps=UNLIMITED_STEPS)
    folder = runs_folder(runs_dir)
    run_dir = jobs.start(folder, config, free_run_name(folder, f"{name}-best"))
    longer = study.user_attrs.get(LONGER_ATTR, [])
    study.set_user_attr(LONGER_ATTR, [*longer, {"run": run_dir.name, "trial": chosen["trial"], "minutes": minutes,
                                                "started": time.time()}])
    return run_dir


def describe(state: dict) -> str:
    """:func:`status` as lines of text: counts, the search, the best (validation) and the test result."""
    d, c = state["definition"], state["counts"]
    budget = " or ".join(filter(None, [f"{d['minutes_per_trial']:g} min" if d["minutes_per_trial"] else "",
                                       f"{d['steps_per_trial']} steps" if d["steps_per_trial"] else ""]))
    lines = [f"{state['name']}: {d['algorithm']} on {d['dataset']}, {state['finished']} of {state['n_trials']} trials "
             f"finished ({c['complete']} complete, {c['pruned']} pruned), {c['running']} running, {c['fail']} failed; "
             f"{len(state['workers'])} worker(s)",
             f"searches {', '.join(describe_dimension(x) for x in d['space'])}; {budget} per trial; "
             f"pruner {d['pruner']}"]
    if state["best"]:
        b = state["best"]
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in b["params"].items())
        lines.append(f"best: trial {b['trial']}, validation accuracy {b['value']:.1%} (run {b['run']}): {params}")
    if state["test"]:
        t = state["test"]
        lines.append(f"test split (measured once): {t['accuracy']:.1%} ± {t['ci95']:.1%} for trial {t['trial']} "
                     f"({t['n_way']}-way {t['k_shot']}-shot, {t['episodes']} episodes)")
    for r in state["trials"]:
        value = f"{r['value']:.1%}" if r["value"] is not None else "-"
        lines.append(f"  {r['number']:3d} {r['state']:8s} val {value:>6s}  {r['run'] or '-':28s} "
                     + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items()))
    return "\n".join(lines)
