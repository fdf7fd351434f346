"""Sweeps: search an algorithm's hyper-parameters with Optuna, each trial a run of the Runs page."""

import streamlit as st

from lab import sweeps
from lab.runs import default_runs_dir
from ui.sweeps import definition_form, sweep_view

st.title("Sweeps")
st.caption("A sweep tries settings of one algorithm, each trial an ordinary run trained in a worker process, "
           "scored by its best meta-validation accuracy; the pruner stops trials that fall behind. The best "
           "is meta-tested once on the test split.")
runs_dir = default_runs_dir()
try:
    names = sweeps.list_sweeps(runs_dir)
except ValueError as err:
    st.error(str(err))
    st.stop()

with st.expander("Define a new sweep", expanded=not names, icon=":material/tune:"):
    created = definition_form(runs_dir)
    if created:
        st.session_state["sweep_next"] = created
        st.rerun()

if "sweep_next" in st.session_state:
    st.session_state["sweep"] = st.session_state.pop("sweep_next")
if not names:
    st.info("No sweep yet: define one above.", icon=":material/info:")
    st.stop()
if st.session_state.get("sweep") not in names:
    st.session_state.pop("sweep", None)
name = st.selectbox("Sweep", names, key="sweep", bind="query-params", help="Every sweep of the study database.")
sweep_view(runs_dir, name)
