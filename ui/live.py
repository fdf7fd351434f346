"""A run's live view: status, what the worker is doing, progress with ETA, key numbers, the four
training curves, Stop and Resume. It is a fragment that reads the run folder afresh (``status.json``,
``metrics.jsonl``) at every refresh while a worker owns the run, so every tab shows the same state
within one refresh and the rest of the page stays usable; it stops polling once the run has ended."""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from lab import jobs
from lab.runs import read_status
from ui.charts import LIVE_CURVES, LIVE_HEIGHT, PALETTE, curve_data, curve_spec
from ui.formats import duration, percent

POLL_S = 2.0
BADGES = {
    "queued": ("Starting", "gray", ":material/hourglass_top:"),
    "running": ("Running", "blue", ":material/play_circle:"),
    "finished": ("Finished", "green", ":material/check_circle:"),
    "stopped": ("Stopped", "orange", ":material/pause_circle:"),
    "failed": ("Failed", "red", ":material/error:"),
    "interrupted": ("Interrupted", "violet", ":material/report:"),
}
PHASES = {  # status.json's "phase", written by the training worker as it goes
    "loading": "Loading the data and building the model",
    "training": "Training",
    "validating": "Meta-validating",
    "checkpoint": "Writing the checkpoint",
    "finished": "Finished",
}

def badge(state: str) -> None:
    label, color, icon = BADGES.get(state, (state, "gray", None))
    st.badge(label, color=color, icon=icon)


def progress_text(view: dict) -> tuple[float, str]:
    """The progress fraction and its caption: step, percent, elapsed time and ETA."""
    status, config = view["status"], view["config"]
    steps, step = config.get("steps", 1), status.get("step", 0)
    progress = status.get("progress") or min(1.0, step / steps)
    elapsed, eta = status.get("elapsed_s"), status.get("eta_s")
    running = status.get("state") == "running"
    if running and eta is not None:  # the ETA counts down between metric lines
        eta = max(0.0, eta - (time.time() - status.get("updated", time.time())))
    limit = f"of {steps:,}" if not config.get("minutes") else f"(ends at {steps:,} steps or {config['minutes']:g} min)"
    text = f"Step {step:,} {limit} · {progress:.0%}"
    if elapsed is not None:
        text += f" · elapsed {duration(elapsed)}"
    if running:
        text += f" · ETA {duration(eta)}" if eta is not None else " · ETA after the first metric line"
    return float(min(max(progress, 0.0), 1.0)), text


def phase_text(view: dict) -> str | None:
    """What the worker is doing now, in words, or None once the run has ended.

    Reads ``status["phase"]`` (with ``val_done`` of ``val_total`` episodes while validating) when the
    worker writes one; without it, says what a worker does before its first metric line.
    """
    status, config = view["status"], view["config"]
    state = status.get("state")
    if not jobs.is_active(status):
        return None
    if state == "queued":
        return "Starting the training process…"
    phase = status.get("phase")
    if phase == "validating" and status.get("val_total"):
        return f"{PHASES[phase]}: {status.get('val_done', 0):,} of {status['val_total']:,} episodes"
    if phase in PHASES:
        return PHASES[phase] + ("…" if phase in ("loading", "checkpoint") else "")
    if not view["metrics"]:
        return (f"Loading the data, building the model and taking the first steps… the first metric line comes "
                f"at step {config.get('log_every', 1):,}")
    return PHASES["training"]


def _since(status: dict) -> str:
    updated = status.get("updated")
    return f" · last update {duration(max(0.0, time.time() - updated))} ago" if updated else ""


def _change(vals: list[dict]) -> str | None:
    """The change of validation accuracy since the previous validation, when there is one."""
    if len(vals) < 2 or abs(vals[-1]["val_accuracy"] - vals[-2]["val_accuracy"]) < 0.0005:
        return None
    return f"{vals[-1]['val_accuracy'] - vals[-2]['val_accuracy']:+.1%}"


def _numbers(metrics: list[dict], narrow: bool) -> None:
    last = next((r for r in reversed(metrics) if "loss" in r), {})
    vals = [r for r in metrics if "val_accuracy" in r]
    cols = [c for _ in range(2) for c in st.columns(2)] if narrow else st.columns(4)
    cols[0].metric("Loss", f"{last['loss']:.3f}" if last else "–", border=True,
                   help="Meta-training loss, last logged")
    cols[1].metric("Train acc.", percent(last.get("accuracy")), border=True,
                   help="Query accuracy on the meta-training tasks, last logged")
    cols[2].metric("Val. acc.", percent(vals[-1]["val_accuracy"]) if vals else "–", border=True,
                   delta=_change(vals),
                   help=f"± {percent(vals[-1].get('val_ci95'))} (95% CI) on the meta-validation classes" if vals
                   else "Measured every few steps on the meta-validation classes")
    tasks = last.get("tasks_per_s")
    cols[3].metric("Tasks / s", f"{tasks:.1f}" if tasks is not None else "–", border=True)


def _controls(run_dir: Path, status: dict, key: str) -> None:
    state = status.get("state")
    if jobs.is_active(status):
        if st.button("Stop", key=f"{key}.stop", icon=":material/stop_circle:",
                     help="Stops after the current step, writing a checkpoint first."):
            jobs.stop(run_dir)
            st.rerun()
    elif state in jobs.RESUMABLE:
        if st.button("Resume", key=f"{key}.resume", type="primary", icon=":material/play_arrow:",
                     help="Continues from the last checkpoint with the same config."):
            try:
                jobs.resume(run_dir)
            except ValueError as err:
                st.error(str(err))
            else:
                st.rerun()


def _header(view: dict, run_dir: Path, key: str, narrow: bool) -> None:
    status, c = view["status"], view["config"]
    head, buttons = st.columns([3, 2] if narrow else [4, 1], vertical_alignment="center")  # room for "Resume"
    with head:
        st.markdown(f"#### {view['name']}")
        badge(status.get("state", "failed"))
        best = status.get("best_val_accuracy")
        st.caption(f"{c.get('algorithm')} · {c.get('dataset')} · {c.get('n_way')}-way {c.get('k_shot')}-shot · "
                   f"{status.get('device') or c.get('device')}" + (f" · best val. {percent(best)}" if best is not None
                                                                  else ""))
    with buttons:
        _controls(run_dir, status, key)


def _curves(view: dict, smoothing: float, key: str) -> None:
    """The four training curves, two by two. They are drawn (empty) from the launch on, so the first
    point lands in charts already in place."""
    config, metrics = view["config"], view["metrics"]
    waiting = {"val_accuracy": f"after the first meta-validation (step {config.get('val_every', 1):,})"}
    cells = [cell for _ in range(2) for cell in st.columns(2)]
    for i, (curve, cell) in enumerate(zip(LIVE_CURVES, cells)):
        data = curve_data(metrics, curve, smoothing)
        spec = curve_spec(curve, len(data), smoothing, PALETTE[2] if curve == "tasks_per_s" else PALETTE[0],
                          empty=waiting.get(curve, f"first point at step {config.get('log_every', 1):,}"),
                          x_title=i >= 2)
        cell.vega_lite_chart(data, spec, key=f"{key}.{curve}", width="stretch", height=LIVE_HEIGHT)


def _panel(run_dir: Path, key: str, was_active: bool, narrow: bool) -> None:
    view = jobs.view(run_dir)  # read afresh at every refresh: nothing of the run is kept in the session
    status = view["status"]
    if not view["config"]:
        st.warning(f"The run {run_dir.name} no longer exists.")
        return
    if jobs.is_active(status) != was_active:
        st.rerun()  # the run started or ended: redraw the page, polling only while it is active
    _header(view, run_dir, key, narrow)
    fraction, text = progress_text(view)
    st.progress(fraction, text=text)
    doing = phase_text(view)
    if doing:
        if status.get("phase") == "validating" and status.get("val_total"):
            st.progress(min(1.0, status.get("val_done", 0) / status["val_total"]), text=doing + _since(status))
        else:
            st.caption(f":material/pending: {doing}{_since(status)}")
    state = status.get("state")
    if state == "failed":
        st.error(f"Failed at step {status.get('step', 0)}: {status.get('error')}", icon=":material/error:")
    elif state == "interrupted":
        st.warning(f"The training process is gone (killed, or the machine restarted) after step {status.get('step', 0)}. "
                   "Resume continues from the last checkpoint.", icon=":material/report:")
    _numbers(view["metrics"], narrow)
    if view["metrics"] or jobs.is_active(status):
        smoothing = st.slider("Smoothing", 0.0, 0.99, 0.6, 0.01, key=f"{key}.smoothing",
                              help="Exponential moving average of the curves, as in TensorBoard; raw values stay faded.")
        _curves(view, smoothing, key)
    else:
        st.info("This run logged no metrics.")
    if state in ("failed", "interrupted"):
        with st.expander("Worker log"):
            st.code(jobs.log_tail(run_dir) or "(empty)", language=None)


def live_panel(run_dir: str | Path, key: str = "live", narrow: bool = False) -> None:
    """Show the run in ``run_dir``, refreshed every ``POLL_S`` seconds while it trains; ``narrow``
    puts its four numbers in two rows (for a column too narrow to show them side by side)."""
    run_dir = Path(run_dir)
    active = jobs.is_active(read_status(run_dir))
    st.fragment(run_every=POLL_S if active else None)(_panel)(run_dir, key, active, narrow)
