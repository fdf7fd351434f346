"""Meta-Train: configure a run, launch it in its own process, and watch it learn."""

import streamlit as st

from lab import jobs
from lab.config import TrainConfig
from lab.data import DatasetUnavailable
from lab.device import gpu_count
from lab.runs import default_runs_dir, list_runs, run_path
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
    values = train_form()
    name = st.text_input("Run name", key="run_name", placeholder="automatic: algorithm-dataset-date")
    gpus = gpu_count()
    processes = st.number_input("Processes / GPUs", 1, gpus, 1, help="Shares each meta-batch across GPUs with "
                                "torchrun; the meta-batch must be divisible by it.") if gpus > 1 else 1
    if st.button("Launch meta-training", type="primary", icon=":material/rocket_launch:", width="stretch"):
        try:
            with st.spinner("Checking the configuration against the data…"):
                run_dir = jobs.start(runs_dir, TrainConfig(**values), name.strip() or None, processes=processes)
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
    live_panel(run_path(runs_dir, watching))
