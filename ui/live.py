"""A run's live view: status, progress with ETA, key numbers, the four training curves, Stop and
Resume. It is a fragment that re-reads the run folder every few seconds while a worker owns the
run, so the rest of the page stays usable, and stops polling once the run has ended."""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from lab import jobs
from lab.runs import read_status
from ui.charts import training_figure

POLL_S = 2.0
BADGES = {
    "queued": ("Starting", "gray", ":material/hourglass_top:"),
    "running": ("Running", "blue", ":material/play_circle:"),
    "finished": ("Finished", "green", ":material/check_circle:"),
    "stopped": ("Stopped", "orange", ":material/pause_circle:"),
    "failed": ("Failed", "red", ":material/error:"),
    "interrupted": ("Interrupted", "violet", ":material/report:"),
}


def duration(seconds: float | None) -> str:
    """'2 h 05 min', '3 min 20 s', '12 s'."""
    if seconds is None:
        return "–"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def badge(state: str) -> None:
    label, color, icon = BADGES.get(state, (state, "gray", None))
    st.badge(label, color=color, icon=icon)


def progress_text(view: dict) -> tuple[float, str]:
    """The progress fraction and its caption: step, percent, elapsed time and ETA."""
    status, config = view["status"], view["config"]
    steps, step = config.get("steps", 1), status.get("step", 0)
    progress = status.get("progress") or min(1.0, step / steps)
    elapsed, eta = status.get("elapsed_s"), status.get("eta_s")
    if status.get("state") == "running" and eta is not None:  # the ETA counts down between metric lines
        eta = max(0.0, eta - (time.time() - status.get("updated", time.time())))
    limit = f"of {steps:,}" if not config.get("minutes") else f"(ends at {steps:,} steps or {config['minutes']:g} min)"
    text = f"Step {step:,} {limit} · {progress:.0%} · elapsed {duration(elapsed)}"
    if status.get("state") == "running":
        text += f" · ETA {duration(eta)}"
    return float(min(max(progress, 0.0), 1.0)), text


def percent(value: float) -> str:
    return "100%" if value >= 0.9995 else f"{value:.1%}"


def _change(vals: list[dict]) -> str | None:
    """The change of validation accuracy since the previous validation, when there is one."""
    if len(vals) < 2 or abs(vals[-1]["val_accuracy"] - vals[-2]["val_accuracy"]) < 0.0005:
        return None
    return f"{vals[-1]['val_accuracy'] - vals[-2]['val_accuracy']:+.1%}"


def _numbers(metrics: list[dict]) -> None:
    last = metrics[-1] if metrics else {}
    vals = [r for r in metrics if "val_accuracy" in r]
    cols = st.columns(4)
    cols[0].metric("Loss", f"{last['loss']:.3f}" if last else "–", border=True, help="Meta-training loss, last logged")
    cols[1].metric("Train acc.", percent(last["accuracy"]) if last else "–", border=True,
                   help="Query accuracy on the meta-training tasks, last logged")
    cols[2].metric("Val. acc.", percent(vals[-1]["val_accuracy"]) if vals else "–", border=True,
                   delta=_change(vals),
                   help=f"± {vals[-1]['val_ci95']:.1%} (95% CI) on the meta-validation classes" if vals else None)
    cols[3].metric("Tasks / s", f"{last['tasks_per_s']:.1f}" if last else "–", border=True)


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


def _panel(run_dir: Path, key: str, was_active: bool) -> None:
    view = jobs.view(run_dir)
    status = view["status"]
    if not view["config"]:
        st.warning(f"The run {run_dir.name} no longer exists.")
        return
    if jobs.is_active(status) != was_active:
        st.rerun()  # the run started or ended: redraw the page, polling only while it is active
    head, buttons = st.columns([4, 1], vertical_alignment="center")
    with head:
        c = view["config"]
        st.markdown(f"#### {view['name']}")
        badge(status.get("state", "failed"))
        best = status.get("best_val_accuracy")
        st.caption(f"{c.get('algorithm')} · {c.get('dataset')} · {c.get('n_way')}-way {c.get('k_shot')}-shot · "
                   f"{status.get('device') or c.get('device')}" + (f" · best val. {best:.1%}" if best is not None else ""))
    with buttons:
        _controls(run_dir, status, key)
    fraction, text = progress_text(view)
    st.progress(fraction, text=text)
    state = status.get("state")
    if state == "failed":
        st.error(f"Failed at step {status.get('step', 0)}: {status.get('error')}", icon=":material/error:")
    elif state == "interrupted":
        st.warning(f"The training process is gone (killed, or the machine restarted) after step {status.get('step', 0)}. "
                   "Resume continues from the last checkpoint.", icon=":material/report:")
    _numbers(view["metrics"])
    if view["metrics"]:
        smoothing = st.slider("Smoothing", 0.0, 0.99, 0.6, 0.01, key=f"{key}.smoothing",
                              help="Exponential moving average of the curves, as in TensorBoard; raw values stay faded.")
        st.plotly_chart(training_figure(view["metrics"], smoothing), key=f"{key}.chart", config={"displaylogo": False})
    else:
        st.info("Waiting for the first metric line…" if jobs.is_active(status) else "This run logged no metrics.")
    if state in ("failed", "interrupted"):
        with st.expander("Worker log"):
            st.code(jobs.log_tail(run_dir) or "(empty)", language=None)


def live_panel(run_dir: str | Path, key: str = "live") -> None:
    """Show the run in ``run_dir``, refreshed every ``POLL_S`` seconds while it trains."""
    run_dir = Path(run_dir)
    active = jobs.is_active(read_status(run_dir))
    st.fragment(run_every=POLL_S if active else None)(_panel)(run_dir, key, active)
