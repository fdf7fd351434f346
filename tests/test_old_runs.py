"""Run folders written by earlier versions of the lab keep loading, evaluating and resuming.

``fixtures/maml-digits-tiny`` is a finished 6-step MAML run (digits, 8 filters, so its
checkpoints are small) written before the engine's layers were rearranged; its config carries
the machine settings ``vectorize`` and ``precision`` in ``hparams``, as runs of that time did.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from lab import runs
from lab.algorithms import build
from lab.config import TrainConfig
from lab.evaluation import evaluate_run

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).with_name("fixtures") / "maml-digits-tiny"


def copy_of_fixture(tmp_path) -> Path:
    run_dir = tmp_path / FIXTURE.name
    shutil.copytree(FIXTURE, run_dir)
    return run_dir


def test_an_old_run_loads_with_its_weights(tmp_path):
    run_dir = copy_of_fixture(tmp_path)
    config, model = runs.load_model(run_dir)
    assert (config.algorithm, config.dataset, config.hparams["hidden"]) == ("maml", "digits", 8)
    assert (config.vectorize, config.precision) == ("auto", "auto")  # machine settings of the run now
    assert "vectorize" not in config.hparams and "precision" not in config.hparams
    saved = runs.load_checkpoint(run_dir / "best.pt")["model"]
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[name], rtol=0, atol=0)


def test_an_old_run_evaluates_alike_twice_and_above_chance(tmp_path):
    run_dir = copy_of_fixture(tmp_path)
    first = evaluate_run(run_dir, episodes=60, seed=3)
    again = evaluate_run(run_dir, episodes=60, seed=3)
    assert first["accuracy"] == again["accuracy"]
    assert first["n_way"] == 5 and first["episodes"] == 60
    assert first["accuracy"] - first["ci95"] > 0.2  # six steps already learn more than chance (1/5)


def test_an_old_run_resumes_where_it_stopped(tmp_path):
    run_dir = copy_of_fixture(tmp_path)
    before = runs.read_jsonl(run_dir / "metrics.jsonl")
    config = json.loads((run_dir / "config.json").read_text())
    config["steps"] = 9
    (run_dir / "config.json").write_text(json.dumps(config))
    done = subprocess.run([sys.executable, "-m", "lab", "resume", str(run_dir)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    after = runs.read_jsonl(run_dir / "metrics.jsonl")
    assert after[: len(before)] == before
    assert [r["step"] for r in after] == list(range(1, 10))
    status = runs.read_status(run_dir)
    assert status["state"] == "finished" and status["step"] == 9
    assert runs.load_checkpoint(run_dir / "last.pt")["step"] == 9


def test_machine_settings_kept_in_an_old_run_s_hparams_become_its_run_settings():
    old = json.loads((FIXTURE / "config.json").read_text())
    old["hparams"].update(vectorize="vmap", precision="bf16")  # "vmap" was the old name of "batched"
    config = TrainConfig.from_dict(old)
    assert (config.vectorize, config.precision) == ("batched", "bf16")
    model = build(config)
    assert model.execution.batched(torch.device("cpu")) and model.strategy(torch.device("cpu")) == "vmap"
    assert TrainConfig.from_dict({**old, "vectorize": "loop"}).vectorize == "loop"  # the run setting wins
