"""Runs as background jobs: each training is its own process, outliving whatever started it.

A page (or a notebook) creates the run folder and starts a worker, ``python -m lab run RUN_DIR``,
in a new session, with its output in ``RUN_DIR/worker.log``. Reloading the page, opening it in
three tabs or restarting the web server neither kills nor duplicates a run: everything about a
run is read back from its folder. Stop is graceful (``runs.request_stop``; a checkpoint is
written); resume starts ``python -m lab resume RUN_DIR``. A worker that dies (``kill -9``, a
reboot) leaves a status whose process is gone, which :func:`lab.runs.read_status` reports as
``interrupted``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from lab import runs
from lab.config import TrainConfig
from lab.device import pick_device
from lab.distributed import World
from lab.experts import train_clustered
from lab.sitting import failures_recorded
from lab.training import check_config, train

LOG_FILE = "worker.log"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
RESUMABLE = ("stopped", "interrupted")


def is_active(status: dict) -> bool:
    """True while a worker owns the run: running, or launched and still starting up."""
    return status.get("state") == "running" or (status.get("state") == "queued" and bool(status.get("pid")))


@contextlib.contextmanager
def _launch_lock(run_dir: Path):
    """One launcher at a time per run, so two tabs clicking Resume start one worker."""
    with open(run_dir / ".launch.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def launch(run_dir: str | os.PathLike, resume: bool = False, processes: int = 1) -> int:
    """Start the worker of ``run_dir`` in its own session; returns its process id.

    With ``processes`` > 1 the worker is ``torchrun`` with that many training processes (one per
    GPU, or Gloo processes on the CPU). Refuses (``ValueError``) when a worker already owns the run.
    """
    run_dir = Path(run_dir).resolve()
    with _launch_lock(run_dir):
        status = runs.read_status(run_dir)
        if is_active(status):
            raise ValueError(f"{run_dir.name} is already {status['state']} (process {status.get('pid')})")
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        command = [*(launcher if processes > 1 else [sys.executable]), "-m", "lab", "resume" if resume else "run",
                   str(run_dir)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
        runs.write_status(run_dir, "queued", pid=None, error=None)
        with open(run_dir / LOG_FILE, "ab") as log:
            proc = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        if runs.read_json(run_dir / "status.json", {}).get("state") == "queued":  # unless the worker got further
            runs.write_status(run_dir, "queued", pid=proc.pid, host=socket.gethostname())
    # Reap the worker when it ends, so a finished worker never lingers as a zombie of this process.
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
    return proc.pid


def start(runs_dir: str | os.PathLike, config, name: str | None = None, processes: int = 1) -> Path:
    """Check that ``config`` can be trained here, create its run folder and start its worker.

    Every refusal (impossible episodes, missing data, absent device, taken name) is raised as
    ``ValueError`` or ``DatasetUnavailable`` before anything is created.
    """
    check_config(config)
    pick_device(config.device)
    if processes < 1 or config.meta_batch % processes:
        raise ValueError(f"meta_batch {config.meta_batch} must be divisible by the number of processes {processes}")
    run_dir = runs.create_run(runs_dir, config, name)
    launch(run_dir, processes=processes)
    return run_dir


def stop(run_dir: str | os.PathLike) -> None:
    """Ask the run to stop: a running training finishes its step and writes a checkpoint first."""
    run_dir = Path(run_dir)
    status = runs.read_status(run_dir)
    if status.get("state") == "running":
        runs.request_stop(run_dir)
    elif is_active(status):  # still starting up, before the training loop watches for a stop
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(status["pid"]), signal.SIGTERM)
        runs.write_status(run_dir, "stopped", eta_s=None)
    else:
        raise ValueError(f"{run_dir.name} is {status.get('state')}, not running")


def check_resumable(run_dir: Path) -> dict:
    """The run's status; refuses, with the reason, a run that is not stopped or interrupted."""
    status = runs.read_status(run_dir)
    if status.get("state") not in RESUMABLE:
        raise ValueError(f"{run_dir.name} is {status.get('state')}: only a stopped or interrupted run can be resumed")
    return status


def resume(run_dir: str | os.PathLike) -> int:
    """Continue a stopped or interrupted run from its last checkpoint (from the start if it has none)."""
    run_dir = Path(run_dir)
    status = check_resumable(run_dir)
    return launch(run_dir, resume=(run_dir / "last.pt").exists(), processes=int(status.get("world_size") or 1))


def run_queued(run_dir: str | os.PathLike, world=None, launched_at: float | None = None):
    """The worker's side of :func:`launch`: train a run folder from its ``config.json``.

    Yields the step records of :func:`lab.training.train`. Any error ends the run as failed with
    its message, including those raised before training starts (a dataset gone missing). Under
    ``torchrun`` (``world``) the launcher is the worker's parent, and rank 0 alone checks and writes.
    ``launched_at`` is when the worker's process began, so the run's budget holds its start-up.
    """
    world = world or World()
    run_dir = Path(run_dir)
    status = runs.read_status(run_dir) if world.is_main else {}
    owners = (None, os.getpid(), os.getppid() if world.distributed else None)
    if status.get("state") == "running" or (status.get("state") == "queued" and status.get("pid") not in owners):
        raise ValueError(f"{run_dir} is already being trained by process {status.get('pid')}")
    if status.get("state") == "finished":
        raise ValueError(f"{run_dir} has finished; start a new run from its config instead")
    with failures_recorded(run_dir if world.is_main else None):  # those before training starts too
        config = TrainConfig.from_dict(runs.read_json(run_dir / "config.json") or {})
        if world.is_main:
            runs.truncate_metrics(run_dir, 0)  # a restart from scratch repeats the steps logged before
        if config.algorithm == "clustered":  # cluster experts fine-tune in minutes: a resume starts them again
            yield from train_clustered(config, run_dir)
        else:
            yield from train(config, run_dir, launched_at=launched_at)


def delete(runs_dir: str | os.PathLike, name: str) -> None:
    """Delete run ``name`` of ``runs_dir``; a running run, or a folder that is not a run, is refused."""
    path = runs.run_path(runs_dir, name)
    if not (path / "config.json").is_file():
        raise ValueError(f"{name!r} is not a run of {Path(runs_dir).resolve()}")
    status = runs.read_status(path)
    if is_active(status):
        raise ValueError(f"{name} is {status['state']}: stop it before deleting it")
    shutil.rmtree(path)


def log_tail(run_dir: str | os.PathLike, lines: int = 20) -> str:
    """The last ``lines`` lines of the worker's output (where an early error is explained)."""
    try:
        with open(Path(run_dir) / LOG_FILE, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])


def view(run_dir: str | os.PathLike) -> dict:
    """Everything a page shows of a run, read from its folder: config, status and metric lines."""
    run_dir = Path(run_dir)
    return {
        "name": run_dir.name,
        "path": str(run_dir),
        "config": runs.read_json(run_dir / "config.json") or {},
        "status": runs.read_status(run_dir),
        "metrics": runs.read_jsonl(run_dir / "metrics.jsonl"),
        "evaluations": runs.read_jsonl(run_dir / "evaluations.jsonl"),
    }
