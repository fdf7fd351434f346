"""Home: what the lab is, the device it computes on, and the datasets it found."""

import streamlit as st

from lab.data import dataset_status
from lab.device import describe_device
from lab.runs import default_runs_dir, list_runs
from ui.run_sections import COLUMNS, runs_frame, styled

st.title("Meta-Learning Lab")
st.write(
    "Explore how machines **learn to learn**: meta-train few-shot image classifiers on real data, "
    "meta-test them on classes they have never seen, and watch them adapt from a handful of examples."
)

device = describe_device()
memory = f" · {device['memory_gib']} GiB" if device["memory_gib"] else ""
label = {"cuda": "GPU (CUDA)", "mps": "GPU (Apple MPS)", "cpu": "CPU"}[device["kind"]]
st.metric("Computing on", label, help="CUDA is used when present, then Apple MPS, else the CPU.")
st.caption(f"{device['name']}{memory}")

st.subheader("Datasets")
rows = [
    {"dataset": name, "available": "yes" if s["available"] else "no", "where": s["where"]}
    for name, s in dataset_status().items()
]
st.dataframe(rows, hide_index=True, width="stretch")
if not all(r["available"] == "yes" for r in rows):
    st.info("Set LAB_DATA_DIR to a folder holding omniglot-py/ and MNIST/raw/ to use Omniglot and MNIST. "
            "The bundled digits dataset always works.")

st.subheader("Latest runs")
latest = list_runs(default_runs_dir())[:5]
if latest:
    frame = runs_frame(latest)[["Run", "Status", "Algorithm", "Dataset", "Task", "Step", "Best val.", "Test acc.",
                                "Created"]]
    st.dataframe(styled(frame), hide_index=True, width="stretch", column_config=COLUMNS, placeholder="–")
    st.page_link("views/runs.py", label="All runs", icon=":material/arrow_forward:")
else:
    st.caption("No runs yet.")
st.page_link("views/meta_train.py", label="Launch a meta-training run", icon=":material/rocket_launch:")
