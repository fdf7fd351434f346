"""Runs: every run in one table, curves overlaid, paired comparisons, meta-tests, internals, exports."""

from pathlib import Path

import streamlit as st

from lab import jobs
from lab.runs import default_runs_dir, list_runs
from ui import run_sections as sections
from ui.live import live_panel

st.title("Runs")
runs_dir = default_runs_dir()
rows = list_runs(runs_dir)
st.caption(f"{len(rows)} run(s) in `{runs_dir.resolve()}` (set LAB_RUNS_DIR to use another folder).")
if not rows:
    st.info("No runs yet: launch one on the Meta-Train page.", icon=":material/info:")
    st.page_link("views/meta_train.py", label="Meta-Train", icon=":material/rocket_launch:")
    st.stop()

sections.runs_table(runs_dir)

st.subheader("Compare runs")
chosen = sections.overlay_section(rows)
sections.compare_section(rows, chosen)

st.subheader("One run")
names = [r["name"] for r in rows]
if st.session_state.get("detail") not in names:
    st.session_state.pop("detail", None)
name = st.selectbox("Run", names, key="detail", bind="query-params")
run_dir = Path(next(r["path"] for r in rows if r["name"] == name))
view = jobs.view(run_dir)
has_checkpoint = (run_dir / "best.pt").exists() or (run_dir / "last.pt").exists()
curves, test, internals, files = st.tabs(["Curves", "Meta-test", "Internals", "Files and actions"], key="detail.tab")
with curves:
    live_panel(run_dir, key="detail")
with test:
    sections.meta_test_section(run_dir, has_checkpoint)
with internals:
    sections.internals_section(run_dir, view["config"].get("algorithm"), has_checkpoint)
with files:
    sections.files_section(runs_dir, run_dir, view)
