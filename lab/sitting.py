"""A sitting of training in a run folder: its status while it runs, a graceful stop on a signal or the
stop file, and the state it ends in (finished, stopped, or failed with the error's message)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import torch

from lab import runs


def process_started() -> float:
    """The :func:`time.perf_counter` reading at which this process began (now, where the system does
    not say): a run launched as a process counts its start-up, the imports and the data, in its budget."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        age = float(Path("/proc/uptime").read_text().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        age = 0.0
    return time.perf_counter() - min(max(age, 0.0), 3600.0)


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


def check_finite(loss: torch.Tensor, step: int, of: str = "the loss") -> None:
    """Raise :class:`NonFiniteLoss` ("the loss became nan at step 12") unless ``loss`` is finite."""
    if not torch.isfinite(loss):
        raise NonFiniteLoss(f"{of} became {loss.item()} at step {step}")


class StopSignal:
    """SIGTERM and SIGINT become a graceful stop request while a sitting runs in the main thread
    (elsewhere, as in a page's thread, only the stop file asks)."""

    def __init__(self):
        self.raised = False
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, *_):
        self.raised = True

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}


def record_failure(run_dir: Path, err: BaseException, **fields) -> None:
    """End the run as failed with ``err``'s type and message (an interrupt or a closed generator is
    not a failure: the run then reads as interrupted once its process is gone)."""
    if isinstance(err, Exception):
        runs.write_status(run_dir, "failed", phase=None, error=f"{type(err).__name__}: {err}", **fields)


@contextlib.contextmanager
def failures_recorded(run_dir: Path | None):
    """Any error raised inside ends the run in ``run_dir`` as failed (nothing is written for None)."""
    try:
        yield
    except BaseException as err:
        if run_dir is not None and runs.read_status(run_dir).get("state") != "failed":
            record_failure(run_dir, err)
        raise


class Sitting:
    """One sitting of training in a run folder, the lifecycle every kind of training shares.

    On entry the stop file is cleared and signals are trapped; :meth:`status` records the phase
    while it runs ("running", owned by this process); :attr:`stop_requested` is true once a
    signal arrived or the stop file appeared; :meth:`finish` names the state to end in
    (default "finished"), written with its fields on a clean exit, when the stop file is cleared
    again. An error ends the run as failed with its message and the last step recorded.
    ``run_dir`` None (a process other than rank 0, or a training without a folder) writes nothing.
    """

    def __init__(self, run_dir: str | os.PathLike | None):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.signals = StopSignal()
        self.step = 0
        self._written_at = 0.0
        self._end = ("finished", {})

    def __enter__(self) -> Sitting:
        if self.run_dir is not None:
            (self.run_dir / runs.STOP_FILE).unlink(missing_ok=True)
        self.signals.__enter__()
        return self

    @property
    def stop_requested(self) -> bool:
        return self.signals.raised or (self.run_dir is not None and runs.stop_requested(self.run_dir))

    def status(self, phase: str | None, every_s: float = 0.0, **fields) -> None:
        """Record that the run is running in ``phase``, at most once every ``every_s`` seconds."""
        self.step = fields.get("step", self.step)
        if self.run_dir is not None and time.perf_counter() - self._written_at >= every_s:
            runs.write_status(self.run_dir, "running", phase=phase, **fields)
            self._written_at = time.perf_counter()

    def finish(self, state: str, **fields) -> None:
        """The state (and its fields) the run ends in when the sitting closes without an error."""
        if state not in runs.STATES:
            raise ValueError(f"state must be one of {', '.join(runs.STATES)}, not {state!r}")
        self.step = fields.get("step", self.step)
        self._end = (state, fields)

    def __exit__(self, kind, err, tb) -> bool:
        self.signals.__exit__(kind, err, tb)
        if self.run_dir is None:
            return False
        if err is None:
            (self.run_dir / runs.STOP_FILE).unlink(missing_ok=True)
            state, fields = self._end
            runs.write_status(self.run_dir, state, phase=None, **{"step": self.step, **fields})
        else:
            record_failure(self.run_dir, err, step=self.step)
        return False
