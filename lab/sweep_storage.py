"""Where sweeps live: an Optuna RDB storage (by default the SQLite file ``<runs_dir>/sweeps.db``), each
study carrying its sweep's definition, and the sweep's folder beside the runs for its lock and logs."""

from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path

import optuna

from lab import runs

ATTR = "sweep"
DB_FILE, FOLDER = "sweeps.db", "sweeps"
RETRIES = 2  # times a trial whose worker died is re-queued


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")



def default_storage(runs_dir: str | os.PathLike) -> str:
    """``$LAB_SWEEP_STORAGE``, else the SQLite file ``sweeps.db`` of the runs folder."""
    return os.environ.get("LAB_SWEEP_STORAGE") or f"sqlite:///{(Path(runs_dir) / DB_FILE).resolve()}"


def retry_callback():
    """Optuna's callback that re-queues a trial whose worker died (renamed in Optuna 4.9)."""
    from optuna import storages

    cls = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return cls(max_retry=RETRIES)


def open_storage(url: str, heartbeat_s: int | None = None):
    """Optuna's RDB storage at a SQLAlchemy URL; with ``heartbeat_s``, trials beat and stale ones are retried."""
    from optuna.storages import RDBStorage

    kwargs = {}
    if heartbeat_s:
        stale = "heartbeat_stale_trial_callback"  # named failed_trial_callback before Optuna 4.9
        name = stale if stale in inspect.signature(RDBStorage).parameters else "failed_trial_callback"
        kwargs = {"heartbeat_interval": int(heartbeat_s), "grace_period": 3 * int(heartbeat_s),
                  name: retry_callback()}
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}  # writers wait their turn
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat
            return RDBStorage(url, engine_kwargs=engine, **kwargs)
    except Exception as err:  # noqa: BLE001 - SQLAlchemy and drivers raise many kinds
        raise ValueError(f"the sweep storage {url} cannot be opened ({one_line(err)})") from None


def storage_url(runs_dir, storage: str | None) -> str:
    """``storage`` when given, else the default storage of ``runs_dir``."""
    return storage or default_storage(runs_dir)


def runs_folder(runs_dir) -> Path:
    """``runs_dir``, else ``$LAB_RUNS_DIR`` or ``./runs``."""
    return Path(runs_dir or runs.default_runs_dir())


def free_run_name(runs_dir: Path, stem: str) -> str:
    """``stem``, or ``stem-2``, ``stem-3``… when a run of that name exists."""
    name, n = stem, 2
    while (Path(runs_dir) / name).exists():
        name, n = f"{stem}-{n}", n + 1
    return name


def sweep_folder(runs_dir, name: str) -> Path:
    """``<runs_dir>/sweeps/<name>``: the lock, the workers' logs and their process files."""
    return runs_folder(runs_dir) / FOLDER / runs.check_name(name)


def list_sweeps(runs_dir=None, storage: str | None = None) -> list[str]:
    """The sweeps of a storage, newest first; a default SQLite file that does not exist yet holds none."""
    runs_dir = runs_folder(runs_dir)
    if not storage and not os.environ.get("LAB_SWEEP_STORAGE") and not (runs_dir / DB_FILE).exists():
        return []
    summaries = optuna.get_all_study_summaries(open_storage(storage_url(runs_dir, storage)))
    ours = [s for s in summaries if ATTR in s.user_attrs]
    return [s.study_name for s in sorted(ours, key=lambda s: s.user_attrs[ATTR].get("created", 0), reverse=True)]


def load(name: str, runs_dir=None, storage: str | None = None, heartbeat: bool = False):
    """(study, definition) of sweep ``name``; with ``heartbeat`` its trials beat while they run."""
    url = storage_url(runs_folder(runs_dir), storage)
    store = open_storage(url)
    if name not in optuna.get_all_study_names(store):
        raise ValueError(f"no sweep named {name!r} in {url}")
    definition = optuna.load_study(study_name=name, storage=store).user_attrs.get(ATTR)
    if not definition:
        raise ValueError(f"the study {name!r} in {url} is not a sweep of this lab (it has no definition)")
    if heartbeat:
        store = open_storage(url, definition["heartbeat_s"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # constant_liar
        study = optuna.load_study(study_name=name, storage=store, sampler=_sampler(definition),
                                  pruner=_pruner(definition))
    return study, definition


def _sampler(definition: dict):
    # Random first, then TPE; constant_liar keeps workers that sample at the same time apart.
    startup = max(3, definition["n_trials"] // 3)
    return optuna.samplers.TPESampler(n_startup_trials=startup, constant_liar=True)


def _pruner(definition: dict):
    kind = definition["pruner"]
    if kind == "median":  # prune below the median of the finished trials at the same step
        return optuna.pruners.MedianPruner(n_startup_trials=max(2, definition["n_trials"] // 4))
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()
