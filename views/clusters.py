"""Task Clusters: embed tasks, K-means them, look at the clusters, and train one expert per cluster."""

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from lab import jobs, runs, zoo
from lab.clustering import (
    BIC_DIMS, EMBEDDINGS, SOURCES, agreement, cluster_table, elbow_k, embed_tasks, fit_feature_map, kmeans,
    load_source, project, scan_k, suggest_k,
)
from lab.data import DatasetUnavailable
from lab.evaluation import episode_accuracies, paired_comparison
from lab.experts import clustered_config, clustered_run_name, find_clustered_runs, untrained_model
from ui.formats import duration, percent, percent_column, progress_bar

UNTRAINED = "untrained encoder (random weights)"
N_WAY, K_SHOT, N_QUERY, SEED = 5, 1, 5, 0


@st.cache_resource(show_spinner=False)
def model_of(path: str, stamp: float):
    return untrained_model() if path == UNTRAINED else runs.load_model(path)[1]


@st.cache_resource(show_spinner=False)
def strokes_of(path: str, stamp: float) -> str:
    """The images a model meets: as drawn, or redrawn as it was trained on them."""
    return "as-drawn" if path == UNTRAINED else runs.load_model(path)[0].strokes


@st.cache_resource(show_spinner="Loading the images of the task source…")
def tasks_of(source: str, n_tasks: int, folder: str | None = None, strokes: str = "as-drawn"):
    task_source = load_source(source, "test", folder=folder, strokes=strokes)
    return task_source, task_source.sample(n_tasks, N_WAY, K_SHOT, N_QUERY, SEED)


# The progress bars are drawn inside the cached functions: Streamlit replays what a cached function drew,
# and a bar that it both draws and removes replays as nothing.
@st.cache_data(show_spinner=False, max_entries=16)
def embedded(path: str, stamp: float, source: str, n_tasks: int, embedding: str, folder: str | None = None):
    tasks = tasks_of(source, n_tasks, folder, strokes_of(path, stamp))[1]
    with progress_bar(f"Embedding the tasks ({embedding})", "tasks") as progress:
        raw = embed_tasks(model_of(path, stamp), tasks, embedding, progress=progress)
    return fit_feature_map(raw, embedding, SEED)(raw)


@st.cache_data(show_spinner=False, max_entries=16)
def curves(features: np.ndarray, max_k: int) -> list[dict]:
    with progress_bar(f"K-means for K = 1 to {max_k}", "values of K") as progress:
        return scan_k(features, range(1, max_k + 1), SEED, progress=progress)


@st.cache_data(show_spinner=False, max_entries=64)
def clusters(features: np.ndarray, k: int) -> np.ndarray:
    return kmeans(features, k, SEED)["labels"]


@st.cache_data(show_spinner="Projecting…", max_entries=16)
def projected(features: np.ndarray, method: str, dims: int) -> np.ndarray:
    return project(features, method, dims, SEED)


@st.cache_data(show_spinner=False, max_entries=8)
def accuracies(path: str, stamp: float, source: str, n_tasks: int, folder: str | None = None) -> np.ndarray:
    with progress_bar(f"Measuring {Path(path).name} on these tasks", "tasks") as progress:
        tasks = tasks_of(source, n_tasks, folder, strokes_of(path, stamp))[1]
        return episode_accuracies(model_of(path, stamp), tasks.episodes,
                                  progress=progress)


def stamp_of(path: str) -> float:
    checkpoint = runs.resolve_source(path) if path.startswith(runs.ZOO_PREFIX) else Path(path) / "best.pt"
    return checkpoint.stat().st_mtime if checkpoint.exists() else 0.0


def line(scan: list[dict], key: str, title: str, k: int) -> go.Figure:
    xs = [r["k"] for r in scan if not np.isnan(r[key])]
    ys = [r[key] for r in scan if not np.isnan(r[key])]
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="lines+markers", name=title))
    fig.add_vline(x=k, line_dash="dot", line_color="gray")
    fig.update_layout(title=title, height=260, margin=dict(l=10, r=10, t=40, b=10), xaxis_title="K", showlegend=False)
    return fig


st.title("Task Clusters")
st.write("Tasks are embedded as vectors, grouped with **K-means**, and checked against their true groups (the "
         "alphabet, or the dataset). One expert per cluster, fine-tuned from the global model, answers the "
         "tasks routed to its centroid.")

runs_dir = runs.default_runs_dir()
bases = [{"name": z["source"], "path": z["source"]} for z in zoo.shipped()]  # the zoo's encoders first
bases += [r for r in runs.list_runs(runs_dir) if r["algorithm"] != "clustered" and r["status"] != "failed"]
with st.sidebar:
    st.header("Tasks")
    choice = st.selectbox("Run (its encoder embeds the tasks)", [UNTRAINED, *(r["name"] for r in bases)],
                          index=1 if bases else 0, key="run")
    source = st.selectbox("Task source", SOURCES, index=SOURCES.index("mixed"), key="source",
                          help="within-alphabet: every task's classes come from one Omniglot evaluation alphabet. "
                               "mixed: tasks from Omniglot, MNIST and the bundled digits.")
    folder = None
    if source == "mixed":
        folder = st.text_input("Your image folder (optional)", key="folder", placeholder="/path/to/images",
                               help="One sub-folder of images per class: its tasks join the mixed ones as a "
                                    "fourth true group.").strip() or None
    n_tasks = st.select_slider("Number of tasks", [100, 200, 300, 500, 1000], value=300, key="n_tasks")
    embedding = st.selectbox("Embedding", EMBEDDINGS, key="embedding",
                             help="representation: mean and spread of the support set's features; gradient: the "
                                  "support loss's gradient for the last block (TSA-MAML style).")
    st.header("View")
    method = st.radio("Projection", ["PCA", "t-SNE"], horizontal=True, key="method")
    dims = st.radio("Dimensions", [2, 3], horizontal=True, format_func=lambda d: f"{d}-D", key="dims")
    colour = st.radio("Colour by", ["cluster", "true group"], horizontal=True, key="colour")

path = UNTRAINED if choice == UNTRAINED else next(r["path"] for r in bases if r["name"] == choice)
if path == UNTRAINED:
    st.info("No trained run is selected, so an **untrained** encoder (random weights) embeds the tasks. "
            "Meta-train a run on the Train page or with `python -m lab train` for meaningful clusters.")
strokes = strokes_of(path, stamp_of(path))
if folder:
    try:
        tasks_of(source, n_tasks, folder, strokes)
    except (ValueError, DatasetUnavailable) as err:
        st.error(f"The image folder is left out: {err}")
        folder = None
try:
    task_source, tasks = tasks_of(source, n_tasks, folder, strokes)
    features = embedded(path, stamp_of(path), source, n_tasks, embedding, folder)
except (ValueError, DatasetUnavailable) as err:
    st.error(f"These tasks cannot be made: {err}")
    st.stop()
if task_source.skipped:
    st.warning(f"Not on disk, so left out of the mixed tasks: {', '.join(task_source.skipped)} "
               "(set LAB_DATA_DIR to the data folder).")

groups = tasks.groups
n_groups = len(set(groups))
scan = curves(features, min(max(10, n_groups + 5), n_tasks - 1, 25))
st.sidebar.header("Clusters")
k = st.sidebar.slider("K (clusters)", 1, scan[-1]["k"], value=min(max(n_groups, 2), scan[-1]["k"]), key=f"k-{source}",
                      help="Starts at the number of true groups; the curves below suggest one too.")
labels = clusters(features, k)
score = agreement(groups, labels)
sil = next(r["silhouette"] for r in scan if r["k"] == k)

cols = st.columns(5)
cols[0].metric("Tasks", n_tasks, help=f"{N_WAY}-way {K_SHOT}-shot test tasks of {n_groups} true groups")
cols[1].metric("ARI", f"{score['ari']:.3f}", help="Adjusted Rand index against the true groups (1 = identical)")
cols[2].metric("NMI", f"{score['nmi']:.3f}", help="Normalised mutual information against the true groups")
cols[3].metric("Silhouette", "–" if np.isnan(sil) else f"{sil:.3f}")
cols[4].metric("Suggested K", suggest_k(scan), help="The K of the lowest BIC: Gaussian mixtures of K components "
               f"fitted in the tasks' top {BIC_DIMS} principal components, each fit weighed against its number of "
               f"parameters. The inertia's elbow is at K = {elbow_k(scan)}.")

left, middle, right = st.columns(3)
left.plotly_chart(line(scan, "inertia", "Elbow: inertia", k), width="stretch")
middle.plotly_chart(line(scan, "silhouette", "Silhouette", k), width="stretch")
right.plotly_chart(line(scan, "bic", "BIC (lower is better)", k), width="stretch")

xyz = projected(features, "pca" if method == "PCA" else "tsne", dims)
frame = pd.DataFrame(xyz, columns=["x", "y", "z"][:dims])
frame["task"] = np.arange(n_tasks)
frame["cluster"] = [f"cluster {c}" for c in labels]
frame["true group"] = groups
palette = px.colors.qualitative.Alphabet if len(set(frame[colour])) > 10 else px.colors.qualitative.Bold
order = {colour: sorted(set(frame[colour]), key=lambda s: (len(s), s))}
common = dict(color=colour, custom_data=["task"], hover_data=["task", "cluster", "true group"],
              color_discrete_sequence=palette, category_orders=order)
fig = px.scatter(frame, x="x", y="y", **common) if dims == 2 else px.scatter_3d(frame, x="x", y="y", z="z", **common)
fig.update_traces(marker=dict(size=8 if dims == 2 else 4, line=dict(width=0.5, color="white")))
if dims == 2:  # the clicked task stands out
    fig.update_traces(selected=dict(marker=dict(size=18, opacity=1.0)), unselected=dict(marker=dict(opacity=0.55)))
fig.update_layout(height=560, margin=dict(l=10, r=10, t=30, b=10), legend_title_text=colour,
                  title=f"{n_tasks} tasks by {method} of the {embedding} embedding")
st.subheader("Tasks")
st.caption("Click a point to see that task's support set." if dims == 2 else
           "Plotly cannot select points in 3-D: hover a point for its task number and enter it below the chart.")
event = st.plotly_chart(fig, width="stretch", key="scatter", on_select="rerun", selection_mode="points")

picked = [p["customdata"][0] for p in (event.selection.points if event else []) if p.get("customdata")]
if dims == 3:
    typed = st.number_input("Task to show", 0, n_tasks - 1, value=None, key="task3d", placeholder="task number")
    picked = [typed] if typed is not None else []
if picked:
    i = int(picked[0])
    st.markdown(f"**Task {i}** · true group **{groups[i]}** · **cluster {labels[i]}**")
    episode = tasks.episodes[i]
    images = [(255 * x[0].numpy()).astype(np.uint8).repeat(4, 0).repeat(4, 1) for x in episode.support_x]
    st.image(images, caption=task_source.class_names(tasks, i), width=112)

st.subheader("Clusters")
table = pd.DataFrame(cluster_table(labels, groups)).rename(columns={"dominant_group": "dominant group"})
experts_run = None
if path != UNTRAINED:
    done = [r for r in find_clustered_runs(runs_dir, path, source, embedding, k, folder) if r["status"] == "finished"]
    experts_run = done[0]["path"] if done else None
if experts_run:
    base_acc = accuracies(path, stamp_of(path), source, n_tasks, folder)
    expert_acc = accuracies(experts_run, stamp_of(experts_run), source, n_tasks, folder)
    table["global accuracy"] = [base_acc[labels == c].mean() if (labels == c).any() else np.nan for c in range(k)]
    table["expert accuracy"] = [expert_acc[labels == c].mean() if (labels == c).any() else np.nan for c in range(k)]
st.dataframe(table, hide_index=True, width="stretch", placeholder="–",
             column_config={"purity": percent_column("purity", bar=True),
                            **{name: percent_column(name) for name in ("global accuracy", "expert accuracy")}})

st.subheader("Cluster experts")
if path == UNTRAINED:
    st.info("Experts are fine-tuned from a trained run: pick one in the sidebar.")
    st.stop()
if experts_run:
    result = paired_comparison(expert_acc, base_acc)
    a, b, c = st.columns(3)
    a.metric("Global model", percent(result["accuracy_b"]))
    b.metric("Clustered experts", percent(result["accuracy_a"]))
    c.metric("Experts − global", f"{100 * result['difference']:+.1f} pts",
             help="Mean per-task difference on these same tasks, with its paired 95% interval")
    st.caption(f"Paired 95% interval of the difference: ±{100 * result['difference_ci95']:.1f} points over "
               f"{result['episodes']} test tasks ({Path(experts_run).name}). For more tasks: "
               f"`python -m lab compare {experts_run} {path} --source {source} --episodes 1000"
               + (f" --folder {folder}`" if folder else "`"))

steps = st.number_input("Fine-tuning steps (all experts together)", 1, 5000, 100 * k, key="steps")
if st.button(f"Train {k} cluster experts in the background", type="primary"):
    try:
        config = clustered_config(path, k, source, embedding, {"tasks": max(n_tasks, 300), "folder": folder},
                                  steps=int(steps), val_episodes=100, n_query=5)
        run_dir = jobs.start(Path(runs_dir).resolve(), config, clustered_run_name(path, source, k))
    except (ValueError, DatasetUnavailable) as err:
        st.error(f"The experts cannot start: {err}")
    else:
        st.session_state["launched"] = {"run": str(run_dir), "pid": runs.read_status(run_dir).get("pid"),
                                        "steps": int(steps)}
launched = st.session_state.get("launched")


@st.fragment(run_every="3s")
def training_progress(run: Path, total: int) -> None:
    status = runs.read_status(run)
    step, eta = status.get("step", 0), status.get("eta_s")
    running = status["state"] == "running"
    doing = ("fine-tuning the experts" if step else "embedding the training tasks and fitting the router") \
        if running else status["state"]
    st.progress(float(status.get("progress") or 0.0),
                text=f"{run.name}: {doing} · step {step:,} of {total:,}"
                     + (f" · ETA {duration(eta)}" if eta is not None and running else ""))
    if status.get("error"):
        st.error(status["error"])
    if status["state"] in ("finished", "failed", "stopped", "interrupted"):
        st.session_state.pop("launched", None)
        if status["state"] == "finished":
            st.rerun()


if launched and not experts_run:
    training_progress(Path(launched["run"]), launched["steps"])
