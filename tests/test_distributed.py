"""Meta-training across two CPU processes with Gloo equals one process with the same tasks."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from lab import runs
from lab.algorithms import build
from lab.config import TrainConfig
from lab.data import load_dataset
from lab.distributed import average_gradients, current_world, shard
from lab.episodes import sample_batch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = TrainConfig(dataset="digits", n_way=5, k_shot=1, n_query=5, meta_batch=4, seed=3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def meta_gradient(world_size: int) -> dict[str, torch.Tensor]:
    """The meta-gradient of one outer step on the configured batch, averaged over the world.

    In float64, so that the comparison tests the sharding and averaging, not float32 rounding."""
    model = build(CONFIG).double()
    batch = sample_batch(load_dataset("digits").pool("train"), 5, 1, 5, CONFIG.meta_batch, np.random.default_rng(0))
    batch = batch._replace(support_x=batch.support_x.double(), query_x=batch.query_x.double())
    model.outer_loss(shard(batch, current_world())).loss.backward()
    average_gradients(model.parameters(), current_world())
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world_size)
    grads = meta_gradient(world_size)
    if rank == 0:
        torch.save(grads, out)
    torch.distributed.destroy_process_group()


def test_the_averaged_meta_gradient_of_two_processes_equals_one_process(tmp_path):
    out = tmp_path / "grads.pt"
    mp.spawn(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    together = torch.load(out, weights_only=True)
    alone = meta_gradient(1)
    for name, grad in alone.items():
        torch.testing.assert_close(together[name], grad, rtol=1e-9, atol=1e-12)


def lab(*args, torchrun: int = 0, **popen):
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={torchrun}",
                f"--master_port={free_port()}"] if torchrun else [sys.executable]
    return subprocess.Popen([*launcher, "-m", "lab", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def workers_said(err: str) -> str:
    """What the worker processes printed, before torchrun's own report of their failure."""
    cut = err.find("torch/distributed/elastic")
    head = err if cut < 0 else err[: err.rfind("\n", 0, cut) + 1]
    return head[-3000:] or err[-3000:]


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def train_args(runs_dir, name, steps):
    return ["train", "--dataset", "digits", "--n-query", "5", "--meta-batch", "4", "--seed", "3", "--steps",
            str(steps), "--val-every", "5", "--val-episodes", "10", "--log-every", "1", "--runs-dir",
            str(runs_dir), "--name", name]


def test_parameters_after_training_with_torchrun_equal_a_single_process(tmp_path):
    two = lab(*train_args(tmp_path, "two", 3), torchrun=2)
    one = lab(*train_args(tmp_path, "one", 3))
    for proc in (two, one):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, workers_said(err)
    a = runs.load_checkpoint(tmp_path / "two" / "last.pt")["model"]
    b = runs.load_checkpoint(tmp_path / "one" / "last.pt")["model"]
    start = build(TrainConfig.from_dict(json.loads((tmp_path / "one" / "config.json").read_text()))).state_dict()
    # Adam divides by the gradient's running scale, so float32 rounding differences in near-zero
    # gradients show up in a few weights; stated tolerance: the two runs' weights differ, on
    # average, by under 2% of how far training moved them (processes that did not average their
    # gradients differ by the order of the update itself).
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in b])
    moved = torch.cat([(b[k] - start[k]).abs().flatten() for k in b])
    assert diff.mean() < 0.02 * moved.mean()
    assert runs.read_status(tmp_path / "two")["world_size"] == 2
    assert len(runs.read_jsonl(tmp_path / "two" / "metrics.jsonl")) == 3  # rank 0 alone writes


def test_a_killed_torchrun_job_resumes_from_its_checkpoint(tmp_path):
    job = lab(*train_args(tmp_path, "killed", 400), torchrun=2)
    run_dir = tmp_path / "killed"
    deadline = time.time() + 240
    while time.time() < deadline and not (run_dir / "last.pt").exists():
        time.sleep(0.5)
    assert (run_dir / "last.pt").exists(), "no checkpoint was written in time"
    time.sleep(1.0)
    for pid in [*children(job.pid), job.pid]:  # torchrun's workers run in sessions of their own
        os.kill(pid, signal.SIGKILL)
    job.wait()
    time.sleep(0.5)
    assert runs.read_status(run_dir)["state"] == "interrupted"
    before = runs.read_jsonl(run_dir / "metrics.jsonl")
    checkpoint_step = runs.load_checkpoint(run_dir / "last.pt")["step"]
    steps_before = [r["step"] for r in before]
    assert steps_before == list(range(1, len(before) + 1))

    config = json.loads((run_dir / "config.json").read_text())
    config["steps"] = checkpoint_step + 5
    (run_dir / "config.json").write_text(json.dumps(config))
    resumed = lab("resume", str(run_dir), torchrun=2)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, workers_said(err)
    after = [r["step"] for r in runs.read_jsonl(run_dir / "metrics.jsonl")]
    assert after == list(range(1, checkpoint_step + 6))  # lines up to the checkpoint kept, then continued
    assert runs.read_status(run_dir)["state"] == "finished"


def test_a_run_launched_with_two_processes_trains_through_torchrun(tmp_path):
    from lab import jobs

    config = TrainConfig(dataset="digits", n_query=5, meta_batch=4, steps=6, val_every=3, val_episodes=5, log_every=3)
    run_dir = jobs.start(tmp_path, config, "two-procs", processes=2)
    deadline = time.time() + 240
    while time.time() < deadline and runs.read_status(run_dir)["state"] in ("queued", "running"):
        time.sleep(0.5)
    status = runs.read_status(run_dir)
    assert status["state"] == "finished", (run_dir / "worker.log").read_text()[-2000:]
    assert status["world_size"] == 2 and status["step"] == 6
    with pytest.raises(ValueError, match="divisible by the number of processes 3"):
        jobs.start(tmp_path, config, "three-procs", processes=3)
