"""The workers of a sweep: processes that take trials of a study one at a time and train them.

A worker counts the study's trials under a lock file (``<runs_dir>/sweeps/<name>/trials.lock``) and
asks Optuna for a trial only while fewer than ``n_trials`` are complete, pruned or running, so any
number of workers together run exactly ``n_trials``. Optuna's heartbeat marks a trial whose worker
died (``kill -9``, a reboot) as failed once three beats are missed, and ``RetryFailedTrialCallback``
puts its parameters back in the queue for the next worker. A worker with nothing left to take waits
while others still run trials, so it can take over one whose worker dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from pathlib import Path

import optuna
from optuna.trial import TrialState

from lab import runs
from lab.config import TrainConfig
from lab.jobs import PROJECT_ROOT
from lab.sitting import NonFiniteLoss
from lab.sweep_space import suggest, with_values
from lab.sweep_storage import free_run_name, load, one_line, retry_callback, runs_folder, storage_url, sweep_folder
from lab.sweeps import workers
from lab.training import train


class SweepStopped(RuntimeError):
    """The worker was asked to stop (SIGTERM or Ctrl-C) in the middle of a trial."""


class _Lock:
    """An exclusive ``flock`` on a file; releasing twice is harmless."""

    def __init__(self, path: Path):
        self._file = open(path, "a")  # noqa: SIM115 - held for the worker's life
        self.held = False

    def acquire(self) -> None:
        fcntl.flock(self._file, fcntl.LOCK_EX)
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            fcntl.flock(self._file, fcntl.LOCK_UN)

    def close(self) -> None:
        self.release()
        self._file.close()


def next_action(study, n_trials: int) -> str:
    """'trial' while a trial is to be had, 'wait' while others run the last ones, else 'done'."""
    states = Counter(t.state for t in study.get_trials(deepcopy=False))
    taken = states[TrialState.COMPLETE] + states[TrialState.PRUNED] + states[TrialState.RUNNING]
    if taken < n_trials:
        return "trial"
    return "wait" if states[TrialState.RUNNING] else "done"


def _fail_stale(study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _train_trial(trial, config: TrainConfig, run_dir: Path) -> float:
    """Train the trial's run, reporting each meta-validation; its best is the trial's value."""
    best, pruned_at = None, None
    try:
        for record in train(config, run_dir):
            if "val_accuracy" not in record:
                continue
            best = max(best or 0.0, record["val_accuracy"])
            trial.report(record["val_accuracy"], record["step"])
            if pruned_at is None and trial.should_prune():
                runs.request_stop(run_dir)  # the run ends after this step, with a checkpoint
                pruned_at = record["step"]
    except NonFiniteLoss as err:
        trial.set_user_attr("diverged", str(err))
        raise optuna.TrialPruned(f"diverged: {err}") from None
    if pruned_at is not None:
        trial.set_user_attr("pruned_at", pruned_at)
        raise optuna.TrialPruned(f"below the pruner's bar at step {pruned_at}")
    if runs.read_status(run_dir).get("state") == "stopped":
        raise SweepStopped(f"the worker was stopped during {run_dir.name}")
    if best is None:
        raise ValueError(f"{run_dir.name} ended without a meta-validation")
    return best


def work(name: str, runs_dir=None, storage: str | None = None, max_failures: int = 3, verbose: bool = False) -> int:
    """Run trials of sweep ``name`` until it holds its number of trials; returns how many this worker ran.

    Each trial is a run folder ``<name>-t<number>`` of ``runs_dir``, its run name stored as the
    trial's user attribute ``run``. Stops early, with ``ValueError``, after ``max_failures`` trials
    in a row that failed; a stop request (SIGTERM, Ctrl-C) ends the current trial's run gracefully
    and re-queues the trial.
    """
    runs_dir = runs_folder(runs_dir)
    study, definition = load(name, runs_dir, storage, heartbeat=True)
    base, space = TrainConfig.from_dict(definition["base"]), definition["space"]
    folder = sweep_folder(runs_dir, name)
    (folder / "workers").mkdir(parents=True, exist_ok=True)
    lock = _Lock(folder / "trials.lock")
    if verbose:  # a trial's end, with its value, in the worker's log
        optuna.logging.set_verbosity(optuna.logging.INFO)
    current, ran, failures = {}, 0, 0

    def objective(trial) -> float:
        lock.release()  # the trial is taken: the others may count and take theirs
        current["number"] = trial.number
        config = with_values(base, suggest(trial, space), space)
        run_dir = runs.create_run(runs_dir, config, free_run_name(runs_dir, f"{name}-t{trial.number:03d}"))
        trial.set_user_attr("run", run_dir.name)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        return _train_trial(trial, config, run_dir)

    try:
        while True:
            lock.acquire()
            try:
                _fail_stale(study)
                action = next_action(study, definition["n_trials"])
                if action == "trial":
                    current.clear()
                    study.optimize(objective, n_trials=1, gc_after_trial=True)
                    ran, failures = ran + 1, 0
            except SweepStopped:
                frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == current.get("number"))
                retry_callback()(study, frozen)  # another worker finishes it
                return ran
            except Exception as err:  # noqa: BLE001 - Optuna has failed the trial with its reason
                ran, failures = ran + 1, failures + 1
                if failures >= max_failures:
                    raise ValueError(f"{failures} trials in a row failed; the last: {one_line(err)}") from None
            finally:
                lock.release()
            if action == "done":
                return ran
            if action == "wait":
                time.sleep(definition["heartbeat_s"])
    finally:
        lock.close()
        (folder / "workers" / f"{os.getpid()}.json").unlink(missing_ok=True)


def launch(name: str, n_workers: int = 1, runs_dir=None, storage: str | None = None) -> list[int]:
    """Start ``n_workers`` background workers (``python -m lab sweep work NAME``); returns their process ids.

    Each logs to ``<runs_dir>/sweeps/<name>/worker-<pid>.log`` and computes on its share of the CPU cores.
    """
    runs_dir = runs_folder(runs_dir).resolve()
    url = storage_url(runs_dir, storage)
    study, definition = load(name, runs_dir, url)
    if not isinstance(n_workers, int) or isinstance(n_workers, bool) or n_workers < 1:
        raise ValueError(f"workers must be a positive whole number, not {n_workers!r}")
    if next_action(study, definition["n_trials"]) == "done":
        raise ValueError(f"{name} already holds its {definition['n_trials']} trials")
    folder = sweep_folder(runs_dir, name)
    (folder / "workers").mkdir(parents=True, exist_ok=True)
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // n_workers))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": threads,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "lab", "sweep", "work", name, "--runs-dir", str(runs_dir), "--storage", url]
    pids = []
    for _ in range(n_workers):
        starting = folder / f"worker-starting-{time.time_ns()}.log"
        with open(starting, "ab") as log:
            proc = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        os.replace(starting, folder / f"worker-{proc.pid}.log")  # the worker keeps writing to it
        runs.write_json(folder / "workers" / f"{proc.pid}.json",
                        {"pid": proc.pid, "host": socket.gethostname(), "log": f"worker-{proc.pid}.log",
                         "started": time.time()})
        # Reap the worker when it ends, so a finished worker never lingers as a zombie of this process.
        threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
        pids.append(proc.pid)
    return pids


def stop_workers(name: str, runs_dir=None) -> int:
    """Ask each live worker to stop: its trial's run ends with a checkpoint and the trial is re-queued."""
    alive = workers(name, runs_dir)
    for info in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(info["pid"]), signal.SIGTERM)
    return len(alive)
