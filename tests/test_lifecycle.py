"""One lifecycle for every kind of training: the run store's ``Sitting``."""

import os
import re
import signal
from pathlib import Path

import pytest
import torch

from lab import runs
from lab import sitting as sitting_

LAB = Path(__file__).resolve().parents[1] / "lab"


def test_a_sitting_runs_then_ends_in_the_state_it_names(tmp_path):
    (tmp_path / runs.STOP_FILE).touch()  # a stale request from an earlier sitting
    with sitting_.Sitting(tmp_path) as sitting:
        assert not sitting.stop_requested
        sitting.status("training", step=3)
        status = runs.read_status(tmp_path)
        assert status["state"] == "running" and status["phase"] == "training" and status["pid"] == os.getpid()
        runs.request_stop(tmp_path)
        assert sitting.stop_requested
        sitting.finish("stopped", step=4, progress=0.4)
    status = runs.read_status(tmp_path)
    assert (status["state"], status["step"], status["progress"], status["phase"]) == ("stopped", 4, 0.4, None)
    assert not (tmp_path / runs.STOP_FILE).exists()


def test_a_sitting_without_a_word_finishes(tmp_path):
    with sitting_.Sitting(tmp_path) as sitting:
        sitting.status("training", step=7)
    assert runs.read_status(tmp_path)["state"] == "finished" and runs.read_status(tmp_path)["step"] == 7


def test_an_error_ends_the_run_as_failed_at_its_last_step(tmp_path):
    with pytest.raises(sitting_.NonFiniteLoss):
        with sitting_.Sitting(tmp_path) as sitting:
            sitting.step = 12
            sitting_.check_finite(torch.tensor(float("nan")), 13)
    status = runs.read_status(tmp_path)
    assert status["state"] == "failed" and status["step"] == 12
    assert status["error"] == "NonFiniteLoss: the loss became nan at step 13"


def test_an_interrupt_is_not_a_failure(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with sitting_.Sitting(tmp_path) as sitting:
            sitting.status("training", step=1)
            raise KeyboardInterrupt
    assert runs.read_json(tmp_path / "status.json")["state"] == "running"  # reads as interrupted once it is gone


def test_sigterm_asks_the_sitting_to_stop_and_the_old_handler_comes_back(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with sitting_.Sitting(tmp_path) as sitting:
        os.kill(os.getpid(), signal.SIGTERM)
        assert sitting.stop_requested
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_sitting_without_a_folder_writes_nothing(tmp_path):
    with sitting_.Sitting(None) as sitting:
        sitting.status("training", step=1)
        sitting.finish("stopped")
    assert list(tmp_path.iterdir()) == []


def test_errors_before_a_sitting_are_recorded_too(tmp_path):
    runs.write_status(tmp_path, "queued")
    with pytest.raises(ValueError):
        with sitting_.failures_recorded(tmp_path):
            raise ValueError("the config names no dataset")
    assert runs.read_status(tmp_path)["error"] == "ValueError: the config names no dataset"


@pytest.mark.parametrize("pattern", [r'write_status\([^)]*"failed"', r"STOP_FILE\)\.unlink", r"signal\.signal\("])
def test_only_the_sitting_keeps_the_lifecycle(pattern):
    writers = sorted(str(p.relative_to(LAB)) for p in LAB.rglob("*.py") if re.search(pattern, p.read_text()))
    assert writers == ["sitting.py"], f"{pattern} is found in {writers}, where only lab/sitting.py should keep it"


def test_a_process_knows_how_long_ago_it_started():
    import subprocess
    import sys

    code = ("import time; time.sleep(1.5); from lab.sitting import process_started; "
            "print(time.perf_counter() - process_started())")
    age = float(subprocess.run([sys.executable, "-c", code], cwd=LAB.parent, capture_output=True, text=True,
                               check=True, timeout=120).stdout)
    assert 1.5 <= age < 60  # the sleep before the import counts; the clock ticks in hundredths
