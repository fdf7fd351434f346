"""The Sweeps page's sections: the definition form, the live view of one sweep (Optuna's own Plotly
figures, the trials with their runs), and what to do with the best trial. Every number says which
split it comes from: trials are scored on meta-validation, the best is meta-tested once."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from lab import sweep_workers, sweeps
from lab.algorithms import REGISTRY
from lab.data import DATASETS, DatasetUnavailable
from lab.sweep_space import default_dimension, describe, searchable
from ui.live import POLL_S

SEARCHED_FIRST = ("meta_lr", "inner_lr", "inner_steps")  # searched unless set to Fixed
VAL_HELP = "Best meta-validation accuracy of the trial's run: trials are scored and chosen on the validation split."


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def _fixed_input(key: str, field: dict, default):
    if field["kind"] == "choice":
        return st.selectbox("Value", field["choices"], index=field["choices"].index(default)
                            if default in field["choices"] else 0, key=f"{key}.value", label_visibility="collapsed")
    if field["kind"] == "int":
        return int(st.number_input("Value", value=int(default), step=1, key=f"{key}.value",
                                   label_visibility="collapsed"))
    return float(st.number_input("Value", value=float(default), format="%g", key=f"{key}.value",
                                 label_visibility="collapsed"))


def _search_input(key: str, dim: dict) -> dict:
    if dim["kind"] == "choice":
        chosen = st.multiselect("Choices", dim["choices"], default=dim["choices"], key=f"{key}.choices",
                                label_visibility="collapsed")
        return {**dim, "choices": chosen}
    c1, c2, c3 = st.columns([2, 2, 1], vertical_alignment="center")
    step, fmt = (1, None) if dim["kind"] == "int" else (None, "%g")
    low = c1.number_input("From", value=dim["low"], step=step, format=fmt, key=f"{key}.low")
    high = c2.number_input("To", value=dim["high"], step=step, format=fmt, key=f"{key}.high")
    log = c3.checkbox("log", value=dim["log"], key=f"{key}.log", help="Sample on a log scale (for rates)")
    return {**dim, "low": low, "high": high, "log": log}


def space_inputs(algorithm: str, base) -> tuple[dict, list[dict]]:
    """One row per searchable field: Fixed (a value) or Search (from … to …, or choices)."""
    fixed, space = {}, []
    for name, field in searchable(algorithm).items():
        key = f"sw.{algorithm}.{name}"
        dim = default_dimension(name, field, base)
        c1, c2, c3 = st.columns([2, 2, 5], vertical_alignment="center")
        kind = f"a hyper-parameter of {algorithm}" if field["target"] == "hparams" else "a run setting"
        c1.markdown(f"**{_label(name)}**", help=f"{name}: {kind}. {field['help']}")
        mode = c2.segmented_control("Mode", ["Fixed", "Search"], key=f"{key}.mode", label_visibility="collapsed",
                                    default="Search" if name in SEARCHED_FIRST else "Fixed") or "Fixed"
        with c3:
            if mode == "Search":
                space.append(_search_input(key, dim))
            elif field["default"] is None:  # train_way: the task's own N-way
                st.caption("the same as N-way")
            else:
                fixed[name] = _fixed_input(key, field, field["default"])
    return fixed, space


def definition_form(runs_dir) -> str | None:
    """The form that defines and launches a sweep; returns the new sweep's name once it started."""
    from lab.config import TrainConfig

    c1, c2, c3 = st.columns(3)
    name = c1.text_input("Sweep name", key="sw.name", placeholder="e.g. maml-rates")
    algorithms = [a for a in sorted(REGISTRY) if a != "clustered"]
    algorithm = c2.selectbox("Algorithm", algorithms, index=algorithms.index("protonet"), key="sw.algorithm")
    dataset = c3.selectbox("Dataset", DATASETS, key="sw.dataset")
    c1, c2, c3, c4 = st.columns(4)
    n_way = c1.number_input("N-way", min_value=2, value=5, step=1, key="sw.n_way")
    k_shot = c2.number_input("K-shot", min_value=1, value=1, step=1, key="sw.k_shot")
    val_every = c3.number_input("Validate every", min_value=1, value=50, step=10, key="sw.val_every",
                                help="Steps between meta-validations: the pruner sees each one.")
    val_episodes = c4.number_input("Validation episodes", min_value=10, value=100, step=50, key="sw.val_episodes")
    st.markdown("**What to search** — each field fixed, or searched from … to …")
    base = TrainConfig(algorithm=algorithm, dataset=dataset, n_way=int(n_way), k_shot=int(k_shot))
    fixed, space = space_inputs(algorithm, base)
    c1, c2, c3, c4, c5 = st.columns(5)
    n_trials = c1.number_input("Trials", min_value=1, value=12, step=1, key="sw.trials")
    minutes = c2.number_input("Minutes per trial", min_value=0.0, value=0.5, step=0.5, format="%g", key="sw.minutes")
    steps = c3.number_input("Steps per trial", min_value=0, value=0, step=100, key="sw.steps",
                            help="0: no step limit, the minutes decide.")
    pruner = c4.selectbox("Pruner", sweeps.PRUNERS, key="sw.pruner", help="median: stop a trial whose validation "
                          "accuracy is below the median of the finished trials at the same step.")
    n_workers = c5.number_input("Workers", min_value=1, max_value=8, value=2, step=1, key="sw.workers",
                                help="Processes running trials at once; they share the CPU cores.")
    if not st.button("Create the sweep and launch its workers", type="primary", icon=":material/tune:"):
        return None
    hparam_names = {n for n, f in searchable(algorithm).items() if f["target"] == "hparams"}
    settings = {k: v for k, v in fixed.items() if k not in hparam_names}
    fixed_all = {**settings, "hparams": {k: v for k, v in fixed.items() if k in hparam_names}, "n_way": int(n_way),
                 "k_shot": int(k_shot), "val_every": int(val_every), "val_episodes": int(val_episodes)}
    try:
        with st.spinner("Checking the search space against the data…"):
            sweeps.create(name.strip(), algorithm, space, dataset=dataset, fixed=fixed_all, n_trials=int(n_trials),
                          minutes_per_trial=minutes or None, steps_per_trial=int(steps) or None, pruner=pruner,
                          runs_dir=runs_dir)
            sweep_workers.launch(name.strip(), int(n_workers), runs_dir)
    except (ValueError, DatasetUnavailable) as err:
        st.error(f"Not created: {err}", icon=":material/block:")
        return None
    return name.strip()


# --------------------------------------------------------------------------- one sweep


def trials_frame(state: dict) -> pd.DataFrame:
    """One row per trial; numbers stay numeric so every column sorts."""
    names = [d["name"] for d in state["definition"]["space"]]
    rows = []
    for t in state["trials"]:
        row = {"Trial": t["number"], "State": t["state"],
               "Val. acc.": t["value"] if t["state"] == "complete" else None,
               "Last val. acc.": t["value"] if t["state"] == "pruned" else None}
        row.update({n: t["params"].get(n) for n in names})
        row.update({"Run": t["run"], "Open": f"/runs?detail={t['run']}" if t["run"] else None,
                    "Validations": t["reports"], "Minutes": t["duration_s"] / 60 if t["duration_s"] else None,
                    "Note": (f"retry of trial {t['retry_of']} " if t["retry_of"] is not None else "")
                    + (f"pruned at {t['pruned_at']}" if t["pruned_at"] else "")
                    + (f"diverged: {t['diverged']}" if t["diverged"] else "")})
        rows.append(row)
    return pd.DataFrame(rows)


TRIAL_COLUMNS = {
    "Val. acc.": st.column_config.ProgressColumn("Val. acc.", min_value=0.0, max_value=1.0, format="percent",
                                                 help=VAL_HELP),
    "Last val. acc.": st.column_config.NumberColumn("Last val. acc.", format="percent",
                                                    help="A pruned trial's last meta-validation accuracy"),
    "Open": st.column_config.LinkColumn("Open", display_text="Runs page", help="The trial's run on the Runs page"),
    "Minutes": st.column_config.NumberColumn("Minutes", format="%.2f"),
}


def _figures(study, state: dict) -> None:
    from optuna import visualization as vis

    complete = state["counts"]["complete"]
    tabs = st.tabs(["History", "Parallel coordinates", "Importances", "Intermediate values"])
    if not complete and not state["counts"]["pruned"]:
        tabs[0].info("The chart fills in as trials finish.", icon=":material/hourglass_top:")
    else:
        tabs[0].plotly_chart(vis.plot_optimization_history(study, target_name="Validation accuracy"),
                             key="sw-history", config={"displaylogo": False})
    if complete:
        tabs[1].plotly_chart(vis.plot_parallel_coordinate(study, target_name="Validation accuracy"),
                             key="sw-parallel", config={"displaylogo": False})
    else:
        tabs[1].caption("Needs one complete trial.")
    if complete >= 2 and len(state["definition"]["space"]) > 1:
        tabs[2].plotly_chart(vis.plot_param_importances(study, target_name="Validation accuracy"),
                             key="sw-importances", config={"displaylogo": False})
    else:
        tabs[2].caption("Needs two complete trials and two searched fields or more.")
    if any(t["reports"] for t in state["trials"]):
        tabs[3].caption("Each trial's meta-validation accuracy as it trained; pruned trials stop early.")
        figure = vis.plot_intermediate_values(study).update_layout(yaxis_title="Validation accuracy")
        tabs[3].plotly_chart(figure, key="sw-intermediate", config={"displaylogo": False})
    else:
        tabs[3].caption("No meta-validation yet.")


def _numbers(state: dict) -> None:
    c = state["counts"]
    cols = st.columns(4)
    cols[0].metric("Trials finished", f"{state['finished']} / {state['n_trials']}", border=True,
                   help=f"{c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed (re-queued or replaced)")
    cols[1].metric("Running", c["running"], border=True, help=f"{len(state['workers'])} worker process(es) alive")
    best = state["best"]
    cols[2].metric("Best (validation)", f"{best['value']:.1%}" if best else "–", border=True,
                   help=VAL_HELP + (f" Trial {best['trial']}, run {best['run']}." if best else ""))
    test = state["test"]
    about = (f"Trial {test['trial']} meta-tested once on {test['episodes']} episodes of never-seen classes, "
             "± the 95% confidence interval" if test else "Meta-test the best below once every trial has ended.")
    cols[3].metric("Test split (once)", f"{test['accuracy']:.1%}" if test else "–", border=True, help=about,
                   delta=f"± {test['ci95']:.1%}" if test else None, delta_color="off", delta_arrow="off")


def _panel(runs_dir, name: str, was_active: bool) -> None:
    study, _ = sweeps.load(name, runs_dir)
    state = sweeps.status(name, runs_dir)
    active = bool(state["workers"] or state["counts"]["running"])
    if active != was_active:
        st.rerun()  # workers started or ended: redraw the page, polling only while they run
    d = state["definition"]
    budget = f"{d['minutes_per_trial']:g} min" if d["minutes_per_trial"] else f"{d['steps_per_trial']} steps"
    st.caption(f"{d['algorithm']} on {d['dataset']} · searches {', '.join(describe(x) for x in d['space'])} · "
               f"{budget} per trial · pruner {d['pruner']} · {len(state['workers'])} worker(s) · "
               f"storage `{state['storage']}`")
    _numbers(state)
    _figures(study, state)
    st.markdown("**Trials** — click a header to sort; values are meta-validation accuracies")
    params = {d["name"]: st.column_config.NumberColumn(d["name"], format="%.3g") for d in d["space"]
              if d["kind"] == "float"}
    st.dataframe(trials_frame(state), hide_index=True, width="stretch", column_config={**TRIAL_COLUMNS, **params},
                 placeholder="–")
    opened = [t["run"] for t in state["trials"] if t["run"]]
    if opened:
        c1, c2 = st.columns([3, 2], vertical_alignment="bottom")
        run = c1.selectbox("A trial's run", opened, key="sw.open")
        c2.page_link("views/runs.py", label=f"Open {run} on the Runs page", icon=":material/monitoring:",
                     query_params={"detail": run})


def sweep_view(runs_dir, name: str) -> None:
    """One sweep, refreshed every few seconds while its workers run."""
    state = sweeps.status(name, runs_dir)
    active = bool(state["workers"] or state["counts"]["running"])
    c1, c2, c3 = st.columns([1, 2, 2], vertical_alignment="bottom")
    more = c1.number_input("Workers", min_value=1, max_value=8, value=2, step=1, key="sw.more")
    if c2.button("Launch workers", icon=":material/play_arrow:", disabled=state["done"], width="stretch",
                 help="Start more processes on this sweep; they take the trials that are left."):
        try:
            sweep_workers.launch(name, int(more), runs_dir)
        except ValueError as err:
            st.error(str(err))
        else:
            st.rerun()
    if c3.button("Stop the workers", icon=":material/stop_circle:", disabled=not state["workers"], width="stretch",
                 help="Their trials' runs stop with a checkpoint and go back in the queue."):
        sweep_workers.stop_workers(name, runs_dir)
        st.rerun()
    st.fragment(run_every=POLL_S if active else None)(_panel)(runs_dir, name, active)
    best_section(runs_dir, name)


def best_section(runs_dir, name: str) -> None:
    """The best trial's config, a longer run of it, and its one meta-test on the test split."""
    state = sweeps.status(name, runs_dir)
    if not state["best"]:
        return
    st.subheader("The best trial")
    chosen = sweeps.best(name, runs_dir)
    st.caption(f"Trial {chosen['trial']} · {chosen['value']:.1%} meta-validation accuracy (validation split) · "
               f"run {chosen['run']}")
    c1, c2 = st.columns(2)
    with c1, st.container(border=True):
        st.markdown("**Train the best for longer**")
        minutes = st.number_input("Minutes", min_value=0.5, value=10.0, step=1.0, format="%g", key="sw.longer")
        if st.button("Train the best for longer", icon=":material/rocket_launch:"):
            try:
                run_dir = sweeps.train_best(name, float(minutes), runs_dir)
            except (ValueError, DatasetUnavailable) as err:
                st.error(f"Not launched: {err}")
            else:
                st.success(f"Started {run_dir.name}.")
        for longer in state["longer_runs"]:
            st.page_link("views/runs.py", label=f"{longer['run']} ({longer['minutes']:g} min)",
                         icon=":material/monitoring:", query_params={"detail": longer["run"]})
    with c2, st.container(border=True):
        st.markdown("**Meta-test the best on the test split**")
        st.caption("Once: a sweep chooses on validation, and its test number is measured a single time.")
        if state["test"]:
            t = state["test"]
            st.metric(f"Test split · {t['n_way']}-way {t['k_shot']}-shot · {t['episodes']} episodes",
                      f"{t['accuracy']:.2%} ± {t['ci95']:.2%}", help=f"Trial {t['trial']}, run {t['run']}")
        elif st.button("Meta-test the best once", icon=":material/science:", disabled=not state["done"],
                       help=None if state["done"] else "Once every trial has ended."):
            try:
                with st.spinner("Meta-testing on never-seen classes…"):
                    sweeps.test_best(name, runs_dir=runs_dir)
            except (ValueError, RuntimeError) as err:
                st.error(f"Meta-test failed: {err}")
            else:
                st.rerun()
    with st.expander("The best trial's config (JSON)"):
        st.json(chosen["config"])
    if state["workers"] == [] and not state["done"]:
        st.caption(f"No worker is running: {state['finished']} of {state['n_trials']} trials finished.")
