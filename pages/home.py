"""Home: what the lab is, the device it computes on, and the datasets it found."""

import streamlit as st

from lab.data import dataset_status
from lab.device import describe_device

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
