"""Sweeps: Optuna studies whose trials are runs of the run store, on the bundled digits with tiny budgets."""

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import optuna
import pytest
from streamlit.testing.v1 import AppTest

from lab import cli, jobs, runs, sweep_workers, sweeps

ROOT = Path(__file__).resolve().parents[1]
TINY = {"n_query": 3, "meta_batch": 1, "val_every": 5, "val_episodes": 10, "log_every": 5}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Workers compute on one thread: on a small shared machine two threads per run are far slower."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("LAB_SWEEP_STORAGE", raising=False)


def make(runs_dir, name="s", n_trials=3, steps=10, **kw):
    kw.setdefault("fixed", TINY)
    kw.setdefault("heartbeat_s", 1)
    return sweeps.create(name, kw.pop("algorithm", "protonet"), kw.pop("space", ["meta_lr=1e-4:1e-2", "train_way=5:8"]),
                         n_trials=n_trials, steps_per_trial=steps, runs_dir=runs_dir, **kw)


def wait_for_workers(name, runs_dir, timeout=150.0):
    deadline = time.monotonic() + timeout
    while sweeps.workers(name, runs_dir):
        if time.monotonic() > deadline:
            logs = "\n".join(p.read_text()[-1500:] for p in sweeps.sweep_folder(runs_dir, name).glob("*.log"))
            raise AssertionError(f"the workers of {name} did not end in {timeout} s\n{logs}")
        time.sleep(0.3)


def finished(state):
    return state["counts"]["complete"] + state["counts"]["pruned"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A three-trial sweep run to the end in this process."""
    runs_dir = tmp_path_factory.mktemp("runs")
    os.environ["OMP_NUM_THREADS"] = "1"
    make(runs_dir, "inproc")
    ran = sweep_workers.work("inproc", runs_dir)
    return runs_dir, ran


def test_a_sweep_run_in_process_holds_exactly_its_trials_each_an_ordinary_run(swept):
    runs_dir, ran = swept
    state = sweeps.status("inproc", runs_dir)
    assert ran == 3 and len(state["trials"]) == 3 and finished(state) == 3 and state["done"]
    assert [t["number"] for t in state["trials"]] == [0, 1, 2]
    listed = {r["name"]: r for r in runs.list_runs(runs_dir)}
    for trial in state["trials"]:
        assert trial["run"] == f"inproc-t{trial['number']:03d}" and trial["run"] in listed
        config = runs.read_json(runs_dir / trial["run"] / "config.json")
        assert config["meta_lr"] == pytest.approx(trial["params"]["meta_lr"])
        assert config["train_way"] == trial["params"]["train_way"] and config["steps"] == 10
        vals = [r["val_accuracy"] for r in runs.read_jsonl(runs_dir / trial["run"] / "metrics.jsonl")
                if "val_accuracy" in r]
        if trial["state"] == "complete":  # the trial's value is its run's best meta-validation accuracy
            assert trial["value"] == pytest.approx(max(vals)) and listed[trial["run"]]["status"] == "finished"
    best = sweeps.best("inproc", runs_dir)
    assert best["split"] == "validation" and best["value"] == max(t["value"] for t in state["trials"]
                                                                  if t["state"] == "complete")
    assert best["config"]["meta_lr"] == pytest.approx(best["params"]["meta_lr"])
    assert sweep_workers.work("inproc", runs_dir) == 0  # a full sweep takes no more trials


def test_the_best_is_tested_once_on_the_test_split_and_the_result_is_kept(swept):
    runs_dir, _ = swept
    first = sweeps.test_best("inproc", episodes=20, runs_dir=runs_dir)
    again = sweeps.test_best("inproc", episodes=20, runs_dir=runs_dir)
    assert first["split"] == "test" and not first["already"] and again["already"]
    assert again["accuracy"] == first["accuracy"] and again["trial"] == sweeps.best("inproc", runs_dir)["trial"]
    evaluations = runs.read_jsonl(runs_dir / first["run"] / "evaluations.jsonl")
    assert len(evaluations) == 1 and evaluations[0]["split"] == "test"
    assert sweeps.status("inproc", runs_dir)["test"]["accuracy"] == first["accuracy"]


def test_training_the_best_for_longer_starts_a_run_of_its_config(swept):
    runs_dir, _ = swept
    run_dir = sweeps.train_best("inproc", 0.05, runs_dir)
    try:
        config = runs.read_json(run_dir / "config.json")
        best = sweeps.best("inproc", runs_dir)
        assert run_dir.name == "inproc-best" and config["minutes"] == 0.05
        assert {k: config[k] for k in best["params"]} == pytest.approx(best["params"])
        assert sweeps.status("inproc", runs_dir)["longer_runs"][0]["run"] == "inproc-best"
    finally:
        jobs.stop(run_dir)


def test_the_sweeps_page_shows_the_trials_their_runs_and_the_split_of_each_number(swept, monkeypatch):
    runs_dir, _ = swept
    monkeypatch.setenv("LAB_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.query_params["sweep"] = "inproc"
    at.switch_page("views/sweeps.py").run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert sorted(table["Run"]) == ["inproc-t000", "inproc-t001", "inproc-t002"]
    assert {m.label for m in at.metric} >= {"Best (validation)", "Test split (once)"}


def test_two_worker_processes_share_one_sqlite_study_without_duplicates_or_losses(tmp_path, capsys):
    make(tmp_path, "two", n_trials=4)
    assert cli.main(["sweep", "run", "two", "--workers", "2", "--runs-dir", str(tmp_path)]) == 0
    pids = {int(p) for p in capsys.readouterr().out.split("processes ")[1].split(";")[0].split(", ")}
    assert {w["pid"] for w in sweeps.workers("two", tmp_path)} <= pids
    wait_for_workers("two", tmp_path)
    assert cli.main(["sweep", "status", "two", "--json", "--runs-dir", str(tmp_path)]) == 0
    state = json.loads(capsys.readouterr().out)
    assert [t["number"] for t in state["trials"]] == [0, 1, 2, 3] and finished(state) == 4
    assert len({t["run"] for t in state["trials"]}) == 4
    assert {int(t["worker"].split(":")[1]) for t in state["trials"]} <= pids
    assert cli.main(["sweep", "best", "two", "--json", "--runs-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["run"] == state["best"]["run"]


def test_a_worker_killed_mid_trial_is_failed_and_requeued_and_the_sweep_still_ends_with_its_trials(tmp_path):
    make(tmp_path, "killed", n_trials=3, steps=60, pruner="none")
    sweep_workers.launch("killed", 2, tmp_path)

    def running_trial():
        for t in sweeps.status("killed", tmp_path)["trials"]:
            if t["state"] == "running" and t["worker"] and t["reports"] >= 1:
                return t

    deadline = time.monotonic() + 90
    while not (victim := running_trial()):
        assert time.monotonic() < deadline, "no trial got to its first meta-validation"
        time.sleep(0.2)
    os.kill(int(victim["worker"].split(":")[1]), signal.SIGKILL)
    killed_at = time.time()
    restarted = sweep_workers.launch("killed", 1, tmp_path)  # a worker started again after the crash
    wait_for_workers("killed", tmp_path)

    state = sweeps.status("killed", tmp_path)
    trials = {t["number"]: t for t in state["trials"]}
    assert trials[victim["number"]]["state"] == "fail"
    retries = [t for t in state["trials"] if t["retry_of"] == victim["number"]]
    assert len(retries) == 1 and retries[0]["state"] == "complete"
    assert retries[0]["params"] == victim["params"]  # the same point, trained again from the start
    assert finished(state) == 3 and state["counts"]["fail"] == 1 and state["counts"]["running"] == 0
    assert runs.read_status(tmp_path / victim["run"])["state"] == "interrupted"
    assert any(t["started"] > killed_at for t in state["trials"] if t["worker"] != victim["worker"])
    log = (sweeps.sweep_folder(tmp_path, "killed") / f"worker-{restarted[0]}.log").read_text()
    assert "this worker ran" in log and "Traceback" not in log  # it joined the same sweep and ended cleanly
    with sqlite3.connect(tmp_path / "sweeps.db") as db:  # the study database is whole
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert len(optuna.load_study(study_name="killed", storage=f"sqlite:///{tmp_path / 'sweeps.db'}").trials) == 4


def test_the_median_pruner_stops_a_trial_far_below_the_others(tmp_path):
    # Adapting with a rate of 50 wrecks the inner loop: 23% at the first meta-validation where 0.5 reaches 47%.
    make(tmp_path, "pruned", n_trials=3, steps=4, algorithm="maml", space=["inner_lr=0.1:100"],
         fixed={**TINY, "val_every": 2, "inner_steps": 1}, try_first=[{"inner_lr": 0.5}, {"inner_lr": 0.5},
                                                                      {"inner_lr": 50.0}])
    sweep_workers.work("pruned", tmp_path)
    trials = sweeps.status("pruned", tmp_path)["trials"]
    assert [t["state"] for t in trials] == ["complete", "complete", "pruned"]
    assert trials[2]["pruned_at"] == 2 and trials[2]["params"] == {"inner_lr": 50.0}
    stopped = runs.read_status(tmp_path / trials[2]["run"])
    assert stopped["state"] == "stopped" and stopped["step"] == 2  # stopped gracefully, with a checkpoint
    assert runs.load_checkpoint(tmp_path / trials[2]["run"] / "last.pt")["step"] == 2


BAD = [
    (["--param", "meta_lr=1e-2:1e-4"], "backwards (low > high)"),
    (["--param", "meta_lr=1e-3:1e-3"], "empty (one value)"),
    (["--param", "meta_lr="], "the range is empty"),
    (["--param", "train_way=5.5:5.7"], "whole numbers"),
    (["--param", "meta_lr=0:1:log"], "must start above 0"),
    (["--param", "inner_rate=1:2"], "unknown hyper-parameter or setting 'inner_rate'"),
    (["--param", "n_way=2:5"], "n_way is not searched"),
    (["--param", "meta_lr", "--fixed", '{"warmup": 3}'], "unknown setting 'warmup'"),
    (["--param", "meta_lr", "--fixed", "{oops"], "take JSON objects"),
    (["--param", "train_way=5:40"], "train_way=40 cannot be trained: 40-way episodes need 40 classes"),
    (["--param", "meta_lr", "--storage", "sqlite:////nonexistent/folder/s.db"], "cannot be opened"),
    (["--param", "meta_lr", "--storage", "nosuchdb://host/x"], "cannot be opened"),
    (["--param", "meta_lr", "--trials", "0"], "positive whole number"),
]


@pytest.mark.parametrize("extra, reason", BAD, ids=[b[1][:30] for b in BAD])
def test_a_sweep_that_cannot_run_is_refused_in_one_line_before_anything_is_written(tmp_path, capsys, extra, reason):
    code = cli.main(["sweep", "create", "bad", "--runs-dir", str(tmp_path / "runs"), "--steps-per-trial", "5", *extra])
    err = capsys.readouterr().err
    assert code == 2 and reason in err and err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_a_second_sweep_of_the_same_name_is_refused(tmp_path):
    make(tmp_path, "twice")
    with pytest.raises(ValueError, match="already exists"):
        make(tmp_path, "twice")


def test_without_a_runs_folder_the_cli_keeps_sweeps_in_lab_runs_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path))
    assert cli.main(["sweep", "status"]) == 0 and "no sweeps yet" in capsys.readouterr().out
    assert not (tmp_path / "sweeps.db").exists()  # looking writes nothing
    assert cli.main(["sweep", "create", "here", "--param", "meta_lr", "--steps-per-trial", "5", "--trials", "2"]) == 0
    assert "searches meta_lr in 0.0001:0.01 (log)" in capsys.readouterr().out  # derived around the default 1e-3
    assert (tmp_path / "sweeps.db").exists()
    assert cli.main(["sweep", "status", "--json"]) == 0 and json.loads(capsys.readouterr().out) == ["here"]
