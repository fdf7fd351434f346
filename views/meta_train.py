"""Meta-Train: configure a run, launch it in its own process, and watch it learn."""

import streamlit as st

from lab import jobs
from lab.config import TrainConfig
from lab.data import DatasetUnavailable
from lab.device import gpu_count
from lab.runs import check_name, default_runs_dir, list_runs, run_path
from ui.forms import train_form
from ui.live import live_panel

st.title("Meta-Train")
st.caption("Each run trains in its own process: reload the page, close it or open it in another tab, the run "
           "goes on. The address bar always holds a link to this form as it is filled in.")
runs_dir = default_runs_dir()
if "watch_next" in st.session_state:
    st.session_state["watching"] = st.session_state.pop("watch_next")

form, watch = st.columns([3, 5], gap="medium")
with form, st.container(border=True):
    values, errors = train_form()
    name = st.text_input("Run name", key="run_name", placeholder="automatic: algorithm-dataset-date").strip()
    if name:
        try:
            check_name(name)
        except ValueError as err:
            errors["run_name"] = f"Run name: {err}"
            st.error(str(err), icon=":material/error:")
    gpus = gpu_count()
    processes = 1
    if gpus > 1:
        processes = st.number_input("Processes / GPUs", value=1.0, step=1.0, format="%g",
                                    help="Shares each meta-batch across GPUs with torchrun; the meta-batch must be "
                                         "divisible by it.")
        if not (float(processes).is_integer() and 1 <= processes <= gpus):
            errors["processes"] = f"Processes / GPUs: must be a whole number from 1 to {gpus}, not {processes:g}"
            st.error(errors["processes"], icon=":material/error:")
        processes = int(processes) if float(processes).is_integer() else processes
    launch = st.button("Launch meta-training", type="primary", icon=":material/rocket_launch:", width="stretch",
                       disabled=bool(errors), help="Fix the fields marked in red first." if errors else None)
    if errors:
        fields = [e.split(":")[0] for k, e in errors.items() if k != "config"]
        st.caption(f":red[Not ready to launch: fix {', '.join(fields)}.]" if fields else
                   f":red[Not ready to launch: {errors['config']}]")
    if launch and not errors:
        try:
            with st.spinner("Checking the configuration against the data…"):
                run_dir = jobs.start(runs_dir, TrainConfig(**values), name or None, processes=processes)
        except (ValueError, DatasetUnavailable) as err:
            st.error(f"Not launched: {err}", icon=":material/block:")
        else:
            st.session_state["watch_next"] = run_dir.name
            st.rerun()

with watch:
    names = [r["name"] for r in list_runs(runs_dir)]
    if not names:
        st.info("Launch a run: its curves appear here while it learns.", icon=":material/monitoring:")
        st.stop()
    if st.session_state.get("watching") not in names:
        st.session_state.pop("watching", None)
    watching = st.selectbox("Watching", names, key="watching", help="Every run of the runs folder, newest first.")
    live_panel(run_path(runs_dir, watching), narrow=True)
