import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab.evaluation import evaluate_run

ROOT = Path(__file__).resolve().parents[1]


def lab(*args, env_extra=None, check=True):
    import os

    env = {**os.environ, **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-m", "lab", *args], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"lab {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def test_datasets_json_lists_every_dataset_with_its_split_sizes(omniglot):
    out = json.loads(lab("datasets", "--json").stdout)
    assert out["digits"]["available"] and out["digits"]["images"] == 1797
    assert out["omniglot"]["splits"]["train"]["classes"] == 4112
    assert out["omniglot"]["splits"]["test"]["images"] == 1692 * 20


def test_train_then_eval_from_the_command_line(tmp_path):
    proc = lab("train", "--algorithm", "protonet", "--dataset", "digits", "--n-way", "5", "--k-shot", "1",
               "--n-query", "5", "--steps", "20", "--val-every", "10", "--val-episodes", "20", "--runs-dir",
               str(tmp_path), "--name", "cli-run")
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    assert run_dir == (tmp_path / "cli-run").resolve() or run_dir.resolve() == (tmp_path / "cli-run").resolve()
    assert {"config.json", "metrics.jsonl", "best.pt", "last.pt", "status.json"} <= {p.name for p in run_dir.iterdir()}
    result = json.loads(lab("eval", str(run_dir), "--n-way", "5", "--k-shot", "1", "--episodes", "50", "--json").stdout)
    assert {"accuracy", "ci95", "episodes", "n_way", "k_shot", "split"} <= set(result)
    assert result["episodes"] == 50 and result["split"] == "test"
    library = evaluate_run(run_dir, n_way=5, k_shot=1, episodes=50, record=False)
    assert result["accuracy"] == library["accuracy"] and result["ci95"] == library["ci95"]
    assert result["accuracy"] - result["ci95"] > 0.2  # 20 steps on the digits learn more than chance (1/5)
    listed = json.loads(lab("runs", "--runs-dir", str(tmp_path), "--json").stdout)
    assert listed[0]["name"] == "cli-run" and listed[0]["status"] == "finished" and listed[0]["step"] == 20
    assert {"path", "algorithm", "dataset", "best_val_accuracy"} <= set(listed[0])


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--n-way", "30", "--steps", "1"], "30-way episodes need 30 classes"),
        (["train", "--dataset", "omniglot", "--steps", "1", "--data-dir", "/nonexistent"], "Omniglot is not under"),
        (["train", "--name", "../x", "--steps", "1"], "not allowed"),
        (["train", "--hparams", '{"distance": "manhattan"}', "--steps", "1"], "distance"),
        (["eval", "/nonexistent/run"], "no checkpoint"),
    ],
)
def test_bad_requests_exit_with_one_clear_line_and_no_traceback(tmp_path, args, message):
    proc = lab(*args, "--runs-dir", str(tmp_path), check=False) if args[0] == "train" else lab(*args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_compare_of_a_run_against_itself_gives_a_zero_difference(tmp_path):
    proc = lab("train", "--dataset", "digits", "--n-query", "5", "--steps", "10", "--val-every", "10",
               "--val-episodes", "10", "--runs-dir", str(tmp_path), "--name", "same")
    run_dir = proc.stdout.strip().splitlines()[-1]
    out = json.loads(lab("compare", run_dir, run_dir, "--episodes", "40", "--json").stdout)
    assert out["difference"] == 0 and out["difference_ci95"] == 0
    assert out["accuracy_a"] == out["accuracy_b"] and out["episodes"] == 40
