import json
import math

import pytest
import torch

from lab import runs
from lab.config import TrainConfig
from lab.data import load_dataset
from lab.evaluation import mean_ci95, meta_test
from lab.training import train


def short_omniglot(**changes) -> TrainConfig:
    base = dict(algorithm="protonet", dataset="omniglot", n_way=5, k_shot=1, n_query=5, train_way=20,
                meta_batch=1, steps=80, val_every=40, val_episodes=40, log_every=20, seed=0)
    return TrainConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def trained_run(omniglot, tmp_path_factory):
    config = short_omniglot()
    run_dir = runs.create_run(tmp_path_factory.mktemp("runs"), config, "proto-short")
    records = list(train(config, run_dir))
    return config, run_dir, records


def test_a_short_protonet_training_beats_chance_by_a_wide_margin(trained_run, omniglot):
    config, run_dir, _ = trained_run
    _, model = runs.load_model(run_dir)
    result = meta_test(model, omniglot.pool("test"), 5, 1, 5, episodes=100, seed=0)
    assert result["accuracy"] > 0.6  # chance is 0.2
    assert 0 < result["ci95"] < 0.1


def test_the_run_folder_describes_itself(trained_run):
    config, run_dir, records = trained_run
    assert json.loads((run_dir / "config.json").read_text()) == config.to_dict()
    assert runs.read_status(run_dir)["state"] == "finished"
    lines = runs.read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in lines] == [20, 40, 60, 80] == [r["step"] for r in records]
    assert "val_accuracy" in lines[1] and "val_accuracy" in lines[3]
    checkpoint = runs.load_checkpoint(run_dir / "best.pt")
    assert checkpoint["config"] == config.to_dict()
    assert checkpoint["best_val"] == max(r["val_accuracy"] for r in lines if "val_accuracy" in r)


def test_a_saved_run_reloads_to_the_same_predictions(trained_run, omniglot):
    _, run_dir, _ = trained_run
    _, a = runs.load_model(run_dir)
    _, b = runs.load_model(run_dir)
    result_a = meta_test(a, omniglot.pool("test"), 5, 1, 5, episodes=20, seed=3)
    result_b = meta_test(b, omniglot.pool("test"), 5, 1, 5, episodes=20, seed=3)
    assert (result_a["per_episode"] == result_b["per_episode"]).all()


def test_the_best_checkpoint_is_the_one_with_the_best_validation(trained_run, omniglot):
    config, run_dir, _ = trained_run
    _, model = runs.load_model(run_dir, "best")
    again = meta_test(model, omniglot.pool("val"), 5, 1, 5, config.val_episodes, seed=config.seed + 1)
    assert again["accuracy"] == pytest.approx(runs.load_checkpoint(run_dir / "best.pt")["best_val"])


def test_a_stopped_run_resumes_where_it_stopped(tmp_path):
    config = TrainConfig(dataset="digits", steps=30, val_every=10, val_episodes=10, log_every=5, n_query=5)
    run_dir = runs.create_run(tmp_path, config, "stop-resume")
    for record in train(config, run_dir):
        if record["step"] == 10:
            runs.request_stop(run_dir)
    assert runs.read_status(run_dir)["state"] == "stopped"
    assert runs.load_checkpoint(run_dir / "last.pt")["step"] == 10
    steps = [r["step"] for r in train(config, run_dir, resume=True)]
    assert steps == [15, 20, 25, 30]
    assert [r["step"] for r in runs.read_jsonl(run_dir / "metrics.jsonl")] == [5, 10, 15, 20, 25, 30]
    assert runs.read_status(run_dir)["state"] == "finished"


def test_a_cosine_schedule_anneals_the_meta_rate_and_resumes_on_it(tmp_path):
    config = TrainConfig(dataset="digits", steps=20, meta_lr=1e-3, lr_schedule="cosine", val_every=10,
                         val_episodes=5, log_every=5, n_query=5)
    run_dir = runs.create_run(tmp_path, config, "cosine")
    for record in train(config, run_dir):
        if record["step"] == 10:
            runs.request_stop(run_dir)
    list(train(config, run_dir, resume=True))
    rates = {r["step"]: r["meta_lr"] for r in runs.read_jsonl(run_dir / "metrics.jsonl")}
    assert list(rates) == [5, 10, 15, 20]
    # the rate of the step that was logged: step s used progress (s - 1) / 20
    for step, rate in rates.items():
        assert rate == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * (step - 1) / 20)))
    flat = TrainConfig(dataset="digits", steps=5, meta_lr=1e-3, val_every=5, val_episodes=5, log_every=5, n_query=5)
    assert [r["meta_lr"] for r in train(flat)] == [1e-3]


def test_a_nan_loss_fails_the_run_with_its_step(tmp_path):
    config = TrainConfig(dataset="digits", steps=5, meta_lr=1e30, val_every=100, n_query=5, log_every=1)
    run_dir = runs.create_run(tmp_path, config, "nan")
    with pytest.raises(RuntimeError, match="the loss became"):
        list(train(config, run_dir))
    status = runs.read_status(run_dir)
    assert status["state"] == "failed" and "NonFiniteLoss" in status["error"]


def test_a_half_written_metric_line_is_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    runs.append_jsonl(path, {"step": 1})
    with open(path, "a") as f:
        f.write('{"step": 2, "lo')
    assert runs.read_jsonl(path) == [{"step": 1}]


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/b", ".hidden", "", "x" * 81, "a..b"])
def test_run_names_cannot_escape_the_runs_folder(tmp_path, name):
    with pytest.raises(ValueError, match="not allowed|would leave"):
        runs.run_path(tmp_path, name)


def test_a_damaged_checkpoint_gives_a_clear_error(tmp_path):
    (tmp_path / "best.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="cannot be read"):
        runs.load_checkpoint(tmp_path / "best.pt")


def test_a_killed_run_reads_as_interrupted(tmp_path):
    config = TrainConfig()
    run_dir = runs.create_run(tmp_path, config, "ghost")
    runs.write_status(run_dir, "running", step=3)
    status = json.loads((run_dir / "status.json").read_text())
    status["pid"] = 2**22 + 12345  # no such process
    (run_dir / "status.json").write_text(json.dumps(status))
    assert runs.read_status(run_dir)["state"] == "interrupted"


@pytest.mark.parametrize(
    "field, value, message",
    [("n_way", 1, "n_way"), ("meta_lr", 0.0, "meta_lr"), ("algorithm", "magic", "algorithm"),
     ("dataset", "cifar", "dataset"), ("steps", 0, "steps"), ("hparams", {"nope": 1}, "hparams"),
     ("lr_schedule", "linear", "lr_schedule")],
)
def test_invalid_configs_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_confidence_interval_is_196_standard_errors():
    mean, half = mean_ci95([0.0, 1.0] * 50)
    assert mean == 0.5 and half == pytest.approx(1.96 * torch.tensor([0.0, 1.0] * 50).std().item() / 10)


def test_the_status_names_each_phase_in_order(tmp_path, monkeypatch):
    written = []
    write_status = runs.write_status

    def recording(run_dir, state, **fields):
        written.append((state, fields.get("phase", written[-1][1] if written else None)))
        return write_status(run_dir, state, **fields)

    monkeypatch.setattr(runs, "write_status", recording)
    config = TrainConfig(dataset="digits", steps=20, val_every=10, val_episodes=20, log_every=5, n_query=5)
    run_dir = runs.create_run(tmp_path, config, "phases")
    list(train(config, run_dir))
    phases = [phase for state, phase in written if state == "running"]
    order = [p for i, p in enumerate(phases) if i == 0 or p != phases[i - 1]]
    assert order == ["loading", "training", "validating", "checkpoint", "training", "validating", "checkpoint",
                     "training"]
    assert written[-1] == ("finished", None) and runs.read_status(run_dir).get("phase") is None


def test_a_validation_ends_early_when_its_time_is_up_but_runs_a_few_episodes(omniglot):
    from lab.algorithms import build
    from lab.training import MIN_VAL_EPISODES, validate

    config = short_omniglot(val_episodes=300)
    model = build(config)
    capped = validate(model, omniglot.pool("val"), config, "cpu", cap_s=0.0)
    assert capped["episodes"] == MIN_VAL_EPISODES
    full = validate(model, omniglot.pool("val"), config.replace(val_episodes=30), "cpu")
    assert full["episodes"] == 30 and full["seconds"] > 0
    # the same episodes as a meta-test with the run's validation seed
    again = meta_test(model, omniglot.pool("val"), 5, 1, 5, 30, seed=config.seed + 1)
    assert full["accuracy"] == pytest.approx(again["accuracy"])


def test_a_minutes_budget_holds_validation_and_the_last_checkpoint(tmp_path):
    import time

    config = TrainConfig(dataset="digits", steps=100_000, minutes=0.1, val_every=50, val_episodes=100_000,
                         log_every=10, n_query=5)
    run_dir = runs.create_run(tmp_path, config, "budget")
    t0 = time.perf_counter()
    records = list(train(config, run_dir))
    wall = time.perf_counter() - t0
    assert wall < 6 + 15  # the budget, plus the slack allowed to budgets under two minutes
    validated = [r for r in records if "val_accuracy" in r]
    assert validated and all(r["val_episodes"] < 100_000 and r["val_s"] >= 0 for r in validated)
    assert "val_accuracy" in records[-1] and runs.read_status(run_dir)["state"] == "finished"


def test_the_eta_after_five_steps_is_within_a_factor_of_two_of_the_time_left(tmp_path):
    import time

    config = TrainConfig(dataset="digits", steps=60, val_every=20, val_episodes=60, log_every=5, n_query=5)
    seen = {}
    for record in train(config, runs.create_run(tmp_path, config, "eta")):
        seen[record["step"]] = (record["eta_s"], time.perf_counter())
    eta, at = seen[5]
    left = seen[60][1] - at
    assert left / 2 <= eta <= 2 * left


@pytest.mark.slow
@pytest.mark.parametrize("busy", [0, 2], ids=["quiet", "two-busy-processes"])
@pytest.mark.parametrize("algorithm", ["protonet", "maml", "fomaml", "anil", "metasgd", "learned-opt", "reptile",
                                       "metanet"])
def test_a_one_minute_run_ends_within_its_budget_from_launch_to_last_checkpoint(tmp_path, algorithm, busy):
    import subprocess
    import sys
    import time

    from conftest import ROOT, require

    require("omniglot-py")
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lab", "train", "--algorithm", algorithm, "--dataset", "omniglot",
                        "--n-query", "5", "--minutes", "1", "--steps", "100000", "--runs-dir", str(tmp_path),
                        "--name", "one-minute"], cwd=ROOT, check=True, capture_output=True, timeout=600)
        wall = time.perf_counter() - t0
    finally:
        for p in burners:
            p.kill()
    assert wall <= 60 + 15, f"{algorithm}: {wall:.0f} s for a one-minute budget"
    assert runs.read_status(tmp_path / "one-minute")["state"] == "finished"
