"""The sections of the Runs page: the table of runs, overlaid curves, the paired comparison, and one
run's meta-test, internals, files and actions. Each reads the run folders and makes one call into
``lab`` for what it computes."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pandas as pd
import streamlit as st

from lab import jobs, runs, zoo
from lab.evaluation import compare_runs, evaluate_run
from ui.charts import SHORT, difference_figure, internals_figure, overlay_figure
from ui.formats import duration, percent, percent_column, progress_bar
from ui.forms import config_query
from ui.live import POLL_S

STATE_COLORS = {"queued": "#6b7280", "running": "#2563eb", "finished": "#059669", "stopped": "#d97706",
                "failed": "#dc2626", "interrupted": "#7c3aed"}


def runs_frame(rows: list[dict]) -> pd.DataFrame:
    """The runs table: one row per run, numbers kept numeric so every column sorts."""
    return pd.DataFrame({
        "Run": [r["name"] for r in rows],
        "Status": [f"● {r['status']}" for r in rows],
        "Algorithm": [r["algorithm"] for r in rows],
        "Dataset": [r["dataset"] for r in rows],
        "Task": [f"{r['n_way']}-way {r['k_shot']}-shot" for r in rows],
        "Step": [r["step"] for r in rows],
        "Best val.": [r["best_val_accuracy"] for r in rows],
        "Test acc.": [r["test_accuracy"] for r in rows],
        "± CI": [r["test_ci95"] for r in rows],
        "Minutes": [r["elapsed_s"] / 60 if r["elapsed_s"] is not None else None for r in rows],
        "Device": [r["device"] for r in rows],
        "Created": [datetime.fromtimestamp(r["created"]) for r in rows],
    })


def styled(frame: pd.DataFrame):
    """The runs table with each status in its colour."""
    color = lambda v: f"color: {STATE_COLORS.get(str(v).lstrip('● '), '#111827')}; font-weight: 600"  # noqa: E731
    return frame.style.map(color, subset=["Status"])


# Widths in pixels: the default columns fit the 820 px of a 1280 px wide window (beside the page list).
COLUMNS = {
    "Run": st.column_config.TextColumn("Run", width=160),
    "Status": st.column_config.TextColumn("Status", width=95),
    "Algorithm": st.column_config.TextColumn("Algorithm", width=82),
    "Dataset": st.column_config.TextColumn("Dataset", width=70),
    "Task": st.column_config.TextColumn("Task", width=92),
    "Step": st.column_config.NumberColumn("Step", width=55, format="localized"),
    "Best val.": percent_column("Best val.", "Best meta-validation accuracy (the best.pt checkpoint)", bar=True,
                                width=84),
    "Test acc.": percent_column("Test acc.", "Latest meta-test on unseen classes", width=68),
    "± CI": percent_column("± CI", "Half-width of the 95% confidence interval of the test accuracy", width=52),
    "Minutes": st.column_config.NumberColumn("Min.", format="%.1f", width=50, help="Training time in minutes"),
    "Device": st.column_config.TextColumn("Device", width=115),
    "Created": st.column_config.DatetimeColumn("Created", format="D MMM HH:mm", width=95),
}
VIEWS = {
    "Results": ["Run", "Status", "Algorithm", "Dataset", "Task", "Step", "Best val.", "Test acc.", "± CI", "Minutes"],
    "Device and time": ["Run", "Status", "Algorithm", "Dataset", "Task", "Step", "Minutes", "Device", "Created"],
}


def runs_table(runs_dir: Path) -> None:
    """All runs, refreshed while one of them trains. Click a column header to sort."""
    rows = runs.list_runs(runs_dir)
    active = any(r["status"] in ("queued", "running") for r in rows)
    view = st.segmented_control("Columns", list(VIEWS), default="Results", key="runs.view",
                                label_visibility="collapsed") or "Results"
    order = VIEWS[view]

    def table():
        st.dataframe(styled(runs_frame(runs.list_runs(runs_dir))), hide_index=True, column_config=COLUMNS,
                     column_order=order, width="stretch", placeholder="–")

    st.fragment(run_every=POLL_S * 2 if active else None)(table)()


def overlay_section(rows: list[dict]) -> list[str]:
    """Curves of the chosen runs on one chart; returns the names chosen."""
    names = [r["name"] for r in rows]
    chosen = st.multiselect("Runs to overlay", names, default=names[:2], key="overlay",
                            placeholder="Choose runs to draw on one chart")
    c1, c2 = st.columns([3, 2], vertical_alignment="bottom")
    metric = c1.segmented_control("Curve", list(SHORT), format_func=SHORT.get, default="val_accuracy",
                                  key="overlay.metric") or "val_accuracy"
    smoothing = c2.slider("Smoothing", 0.0, 0.99, 0.6, 0.01, key="overlay.smoothing",
                          disabled=metric == "val_accuracy", help="Validation points are drawn as measured.")
    if not chosen:
        return chosen
    paths = {r["name"]: Path(r["path"]) for r in rows}
    active = any(r["name"] in chosen and r["status"] in ("queued", "running") for r in rows)

    def chart():
        series = {n: runs.read_jsonl(paths[n] / "metrics.jsonl") for n in chosen}
        st.plotly_chart(overlay_figure(series, metric, smoothing), key="overlay.chart", config={"displaylogo": False})

    st.fragment(run_every=POLL_S if active else None)(chart)()
    return chosen


def compare_section(rows: list[dict], chosen: list[str]) -> None:
    """The chosen runs on the same test episodes: accuracy ± CI each, and paired differences."""
    paths = {r["name"]: r["path"] for r in rows}
    shipped = [z["source"] for z in zoo.shipped()]
    with_zoo = st.multiselect("Zoo models to compare with", shipped, key="cmp.zoo", disabled=not shipped,
                              placeholder="Add models of the zoo" if shipped else "The zoo ships no model yet",
                              help="Models the lab trained to their papers' figures, met on the same episodes.")
    paths.update({z: z for z in with_zoo})
    chosen = [*chosen, *with_zoo]
    c1, c2, c3 = st.columns([1, 1, 2], vertical_alignment="bottom")
    episodes = c1.number_input("Test episodes", min_value=20, max_value=10000, value=600, step=100, key="cmp.episodes")
    seed = c2.number_input("Episode seed", min_value=0, value=0, step=1, key="cmp.seed")
    if c3.button("Compare on the same test episodes", icon=":material/compare_arrows:", disabled=len(chosen) < 2,
                 help="Choose two runs or more above (or a run and zoo models). The first chosen run is the "
                      "reference; its dataset and task shape are used for all."):
        try:
            with progress_bar(f"Meta-testing {len(chosen)} runs on the same {episodes:,} episodes") as progress:
                st.session_state["comparison"] = compare_runs([paths[n] for n in chosen], episodes=int(episodes),
                                                              seed=int(seed), progress=progress)
        except (ValueError, RuntimeError) as err:
            st.error(f"Could not compare: {err}")
    result = st.session_state.get("comparison")
    if not result or [r["run"] for r in result["runs"]] != chosen:
        return
    st.caption(f"{result['n_way']}-way {result['k_shot']}-shot tasks from {result['dataset']}:{result['split']}, "
               f"{result['episodes']} episodes (seed {result['seed']}), the same for every run.")
    diffs = {p["run_a"]: p for p in result["pairs"]}
    table = pd.DataFrame({
        "Run": [r["run"] for r in result["runs"]],
        "Test accuracy": [r["accuracy"] for r in result["runs"]],
        "± 95% CI": [r["ci95"] for r in result["runs"]],
        f"− {chosen[0]}": [diffs[r["run"]]["difference"] if r["run"] in diffs else None for r in result["runs"]],
        "± paired CI": [diffs[r["run"]]["difference_ci95"] if r["run"] in diffs else None for r in result["runs"]],
    })
    st.dataframe(table, hide_index=True, width="stretch", placeholder="–",
                 column_config={c: percent_column(c) for c in table.columns[1:]})
    st.plotly_chart(difference_figure(result["pairs"]), key="cmp.chart", config={"displaylogo": False})


def meta_test_section(run_dir: Path, has_checkpoint: bool) -> None:
    c1, c2, c3 = st.columns([1, 1, 2], vertical_alignment="bottom")
    episodes = c1.number_input("Episodes", min_value=20, max_value=10000, value=600, step=100, key="mt.episodes")
    seed = c2.number_input("Seed", min_value=0, value=0, step=1, key="mt.seed")
    if c3.button("Meta-test the best checkpoint", type="primary", icon=":material/science:",
                 disabled=not has_checkpoint, help="On the test classes, never seen in training."):
        try:
            with progress_bar(f"Meta-testing on {episodes:,} tasks of never-seen classes", "tasks") as progress:
                result = evaluate_run(run_dir, episodes=int(episodes), seed=int(seed), progress=progress)
        except (ValueError, RuntimeError) as err:
            st.error(f"Meta-test failed: {err}")
        else:  # the runs table above is drawn already: a rerun shows the new test accuracy there too
            st.toast(f"{run_dir.name}: {percent(result['accuracy'])} ± {percent(result['ci95'])} on the test classes",
                     icon=":material/science:")
            st.rerun()
    evals = runs.read_jsonl(run_dir / "evaluations.jsonl")
    if not evals:
        st.caption("Not meta-tested yet." if has_checkpoint else "No checkpoint yet.")
        return
    last = evals[-1]
    st.metric(f"Test accuracy · {last['n_way']}-way {last['k_shot']}-shot · {last['dataset']}:{last['split']}",
              f"{percent(last['accuracy'])} ± {percent(last['ci95'])}",
              help="Mean over the episodes ± 95% confidence interval")
    frame = pd.DataFrame(evals).reindex(columns=["dataset", "split", "n_way", "k_shot", "episodes", "seed", "accuracy",
                                                 "ci95"])
    st.dataframe(frame.iloc[::-1], hide_index=True, width="stretch", placeholder="–",
                 column_config={"accuracy": percent_column("accuracy"), "ci95": percent_column("± 95% CI")})


@st.cache_data(show_spinner=False, max_entries=16)
def _internals(path: str, stamp: float) -> dict:
    _, model = runs.load_model(path)
    return model.internals()


def internals_section(run_dir: Path, algorithm: str, has_checkpoint: bool) -> None:
    if not has_checkpoint:
        st.caption("No checkpoint yet.")
        return
    checkpoint = run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "last.pt"
    try:
        internals = _internals(str(run_dir), checkpoint.stat().st_mtime)
    except (ValueError, OSError) as err:
        st.error(str(err))
        return
    if not internals:
        st.info(f"{algorithm} has no learned internals to show beyond its weights "
                "(Meta-SGD's learned rates or a learned optimizer's updates appear here).", icon=":material/info:")
        return
    for name, value in internals.items():
        st.markdown(f"**{name.replace('_', ' ')}**")
        figure = internals_figure(value)
        if figure is not None:
            st.plotly_chart(figure, key=f"internals.{name}", config={"displaylogo": False})
        else:
            st.json(value, expanded=False)


def _page_url(page: str, query: dict) -> str:
    """An absolute link to another page of this app, when the browser's address is known."""
    here = st.context.url
    base = ""
    if here:
        parts = urlsplit(here)
        base = f"{parts.scheme}://{parts.netloc}{parts.path.rsplit('/', 1)[0]}"
    return f"{base}/{page}?{urlencode(query)}"


def files_section(runs_dir: Path, run_dir: Path, view: dict) -> None:
    config, status = view["config"], view["status"]
    c1, c2, c3 = st.columns(3)
    metrics = pd.DataFrame(view["metrics"])
    c1.download_button("Metrics (CSV)", metrics.to_csv(index=False), f"{run_dir.name}-metrics.csv", "text/csv",
                       icon=":material/table:", disabled=metrics.empty, width="stretch")
    c2.download_button("Config (JSON)", json.dumps(config, indent=2), f"{run_dir.name}-config.json",
                       "application/json", icon=":material/data_object:", width="stretch")
    best = run_dir / "best.pt"
    c3.download_button("Best checkpoint", best.read_bytes() if best.exists() else b"", f"{run_dir.name}-best.pt",
                       "application/octet-stream", icon=":material/download:", disabled=not best.exists(),
                       width="stretch")
    query = config_query(config)
    c1, c2 = st.columns(2)
    if c1.button("New run from this config", icon=":material/content_copy:", width="stretch"):
        st.switch_page("views/meta_train.py", query_params=query)
    active = jobs.is_active(status)
    if c2.button("Delete this run…", icon=":material/delete:", width="stretch", disabled=active,
                 help="Stop it first." if active else None):
        st.session_state["confirm_delete"] = run_dir.name
    if st.session_state.get("confirm_delete") == run_dir.name:
        st.warning(f"Delete **{run_dir.name}**, its metrics and its checkpoints? This cannot be undone.")
        c1, c2 = st.columns(2)
        if c1.button("Delete permanently", type="primary", key="delete.yes", width="stretch"):
            try:
                jobs.delete(runs_dir, run_dir.name)
            except ValueError as err:
                st.error(str(err))
            else:
                st.session_state.pop("confirm_delete", None)
                st.toast(f"Deleted {run_dir.name}")
                st.rerun()
        if c2.button("Cancel", key="delete.no", width="stretch"):
            st.session_state.pop("confirm_delete", None)
            st.rerun()
    st.markdown("**Link to the Meta-Train form with this config**")
    st.code(_page_url("meta_train", query), language=None, wrap_lines=True)
    st.markdown("**Config**")
    st.json(config, expanded=False)
    st.caption(f"Folder: `{run_dir}` · {duration(status.get('elapsed_s'))} of training")
