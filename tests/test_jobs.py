"""Runs as background processes: launched, killed, resumed, stopped, refused, deleted."""

import os
import signal
import time

import pytest

from lab import jobs, runs
from lab.config import TrainConfig
from lab.runs import read_jsonl, read_status

@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Workers compute on one thread: on a small shared machine two threads per run are far slower."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


TINY = dict(dataset="digits", n_query=3, meta_batch=1, val_episodes=5, seed=0)


def wait_for(run_dir, done, timeout=180.0, what="the run"):
    """Poll the run folder until ``done(status, metrics)``; fail with the worker's log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, metrics = read_status(run_dir), read_jsonl(run_dir / "metrics.jsonl")
        if done(status, metrics):
            return status, metrics
        time.sleep(0.2)
    raise AssertionError(f"{what} did not get there in {timeout} s; status {read_status(run_dir)}\n{jobs.log_tail(run_dir)}")


def ended(status, _):
    return not jobs.is_active(status)


def test_a_killed_training_is_interrupted_resumes_with_intact_metrics_and_stops_gracefully(tmp_path):
    config = TrainConfig(**TINY, steps=100_000, val_every=4, log_every=2)  # ends only when told to
    run_dir = jobs.start(tmp_path, config, "killed")
    status, _ = wait_for(run_dir, lambda s, m: s["state"] == "running" and m and m[-1]["step"] >= 6,
                         what="the first checkpoint")
    os.kill(status["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(run_dir, lambda s, _: s["state"] == "interrupted", timeout=10, what="the interrupted state")
    assert time.monotonic() - killed_at < 5
    before = read_jsonl(run_dir / "metrics.jsonl")
    checkpoint_step = runs.load_checkpoint(run_dir / "last.pt")["step"]
    assert checkpoint_step % 4 == 0 and 4 <= checkpoint_step <= before[-1]["step"]
    with open(run_dir / "metrics.jsonl", "a") as f:  # the line the kill cut in half
        f.write(f'{{"step": {before[-1]["step"] + 2}, "loss": 0.1')

    jobs.resume(run_dir)
    wait_for(run_dir, lambda s, m: m and m[-1]["step"] >= before[-1]["step"] + 4, what="the resumed run")
    jobs.stop(run_dir)
    status, after = wait_for(run_dir, ended)
    assert status["state"] == "stopped"
    assert runs.load_checkpoint(run_dir / "last.pt")["step"] == status["step"]  # the stop wrote a checkpoint
    steps = [r["step"] for r in after]
    assert steps == list(range(2, steps[-1] + 1, 2))  # every step once: none lost, none repeated
    kept = [r for r in before if r["step"] <= checkpoint_step]
    assert after[: len(kept)] == kept  # lines up to the checkpoint stay as they were written
    redone = {r["step"]: r for r in after}
    for r in before:  # lines past the checkpoint are trained again from the same state and task stream
        assert redone[r["step"]]["loss"] == pytest.approx(r["loss"], rel=1e-4)


def test_a_second_launch_of_a_starting_run_is_refused(tmp_path):
    run_dir = jobs.start(tmp_path, TrainConfig(**TINY, steps=5), "twice")
    with pytest.raises(ValueError, match="already"):
        jobs.launch(run_dir)
    with pytest.raises(ValueError, match="only a stopped or interrupted run"):
        jobs.resume(run_dir)
    jobs.stop(run_dir)  # while it is still starting up: its process is ended
    status, _ = wait_for(run_dir, ended)
    assert status["state"] in ("stopped", "interrupted")


def test_runs_that_cannot_train_end_failed_with_the_step_and_the_reason(tmp_path):
    missing = runs.create_run(tmp_path, TrainConfig(dataset="omniglot", data_dir="/nonexistent", steps=5), "missing")
    nan = runs.create_run(tmp_path, TrainConfig(**TINY, steps=5, meta_lr=1e30, log_every=1), "nan")
    jobs.launch(missing)  # past the page's checks, as if the data vanished after the launch
    jobs.launch(nan)
    status, _ = wait_for(missing, ended)
    assert status["state"] == "failed" and "Omniglot is not under /nonexistent" in status["error"]
    status, _ = wait_for(nan, ended)
    assert status["state"] == "failed" and "the loss became" in status["error"] and "at step" in status["error"]
    assert "Traceback" not in jobs.log_tail(nan)


def test_start_refuses_an_impossible_config_before_creating_anything(tmp_path):
    with pytest.raises(ValueError, match="30-way episodes need 30 classes"):
        jobs.start(tmp_path, TrainConfig(dataset="digits", n_way=30))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["../outside", "/etc", "a/b", "..", ""])
def test_delete_refuses_names_that_leave_the_runs_folder(tmp_path, name):
    with pytest.raises(ValueError, match="not allowed|would leave"):
        jobs.delete(tmp_path / "runs", name)


def test_delete_removes_a_run_but_not_a_folder_that_is_not_a_run(tmp_path):
    run_dir = runs.create_run(tmp_path, TrainConfig(), "old")
    (tmp_path / "notes").mkdir()
    with pytest.raises(ValueError, match="not a run"):
        jobs.delete(tmp_path, "notes")
    runs.write_status(run_dir, "stopped")
    jobs.delete(tmp_path, "old")
    assert not run_dir.exists() and (tmp_path / "notes").exists()


def test_a_running_run_cannot_be_deleted(tmp_path):
    run_dir = runs.create_run(tmp_path, TrainConfig(), "busy")
    runs.write_status(run_dir, "running")  # owned by this (live) process
    with pytest.raises(ValueError, match="stop it"):
        jobs.delete(tmp_path, "busy")
