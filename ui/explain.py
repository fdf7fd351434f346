"""The "Why?" panel of Draw & Predict: what :func:`lab.explain.explain` says of one prediction."""

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from lab.preprocess import to_png

PALETTE = ["#4f46e5", "#059669", "#d97706", "#dc2626", "#7c3aed", "#0891b2", "#65a30d", "#db2777", "#475569", "#ca8a04"]


def explanation_for(predictor, prediction, support) -> dict:
    """The explanation of ``prediction`` against ``support`` (kept per model, drawing and support set)."""
    key = ("explain", id(predictor.model), support.key, prediction.image.tobytes())
    cache = st.session_state.setdefault("explanations", {})
    if key not in cache:
        cache.clear()  # one drawing at a time
        cache[key] = predictor.explain(prediction.image, support)
    return cache[key]


def _heatmap(values: np.ndarray, image: np.ndarray, title: str) -> go.Figure:
    bound = float(np.abs(values).max()) or 1.0
    fig = go.Figure(go.Heatmap(z=image, colorscale="gray", showscale=False, hoverinfo="skip"))
    fig.add_trace(go.Heatmap(z=values, colorscale="RdBu_r", zmid=0, zmin=-bound, zmax=bound, opacity=0.7,
                             colorbar=dict(title="attribution", thickness=10),
                             hovertemplate="row %{y}, column %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=title, height=320, margin=dict(l=10, r=10, t=40, b=10),
                      yaxis=dict(autorange="reversed", scaleanchor="x", showticklabels=False),
                      xaxis=dict(showticklabels=False))
    return fig


def show_explanation(predictor, prediction, support, shown_name) -> None:
    """Neighbours, the attribution map, the embedding map and the inner steps, one tab each."""
    why = explanation_for(predictor, prediction, support)
    near, looked, plane, steps = st.tabs(["Nearest examples", "Where it looked", "Map", "Watch it adapt"])
    with near:
        rows = why["neighbours"]
        if isinstance(rows, dict):
            st.info(rows["reason"])
        else:
            st.caption("Each class's support example nearest to the drawing in the model's embedding: the closer, "
                       "the more the model takes the drawing for that class.")
            cols = st.columns(min(5, len(rows)))
            for col, row in zip(cols, rows[:5]):
                col.image(to_png(support.images[row["index"]], scale=3),
                          caption=f"{shown_name(row['class'])} · distance {row['distance']:.2f}")
    with looked:
        attr = why["attribution"]
        views = {f"for {shown_name(attr['class'])}": np.array(attr["map"])}
        if "contrast" in attr:
            views[f"{shown_name(attr['class'])} rather than {shown_name(attr['contrast']['against'])}"] = \
                np.array(attr["contrast"]["map"])
        choice = st.radio("Attribution", list(views), horizontal=True, key="why-view", label_visibility="collapsed")
        st.plotly_chart(_heatmap(views[choice], prediction.image, choice), config={"displayModeBar": False},
                        key="why-heatmap")
        st.caption(f"{attr['method']}: red pixels raise the score, blue ones lower it "
                   f"(convergence delta {attr['convergence_delta']:.3f}).")
    with plane:
        m = why["map"]
        if "reason" in m:
            st.info(m["reason"])
        else:
            xy, labels = np.array(m["support"]), np.array(m["labels"])
            fig = go.Figure()
            for c, name in enumerate(support.class_names):
                mine = xy[labels == c]
                fig.add_trace(go.Scatter(x=mine[:, 0], y=mine[:, 1], mode="markers", name=shown_name(name),
                                         marker=dict(size=9, color=PALETTE[c % len(PALETTE)])))
            fig.add_trace(go.Scatter(x=[m["image"][0]], y=[m["image"][1]], mode="markers", name="the drawing",
                                     marker=dict(size=18, symbol="star", color="black")))
            fig.update_layout(height=340, margin=dict(l=10, r=10, t=10, b=10), xaxis_title="PC 1",
                              yaxis_title="PC 2")
            st.plotly_chart(fig, config={"displayModeBar": False}, key="why-map")
    with steps:
        adapt = why["adaptation"]
        if not adapt["applies"]:
            st.info(adapt["reason"])
            if adapt.get("memory"):
                cols = st.columns(5)
                for col, read in zip(cols, adapt["memory"][:5]):
                    col.image(to_png(support.images[read["index"]], scale=3),
                              caption=f"{shown_name(support.class_names[read['label']])} · {read['attention']:.0%}")
            return
        rows = adapt["steps"]
        k = st.slider("Inner step", 0, len(rows) - 1, len(rows) - 1, key="why-step")
        row = rows[k]
        probs = row["probabilities"]
        fig = go.Figure(go.Bar(x=probs, y=[shown_name(n) for n in support.class_names], orientation="h",
                               marker_color="#4f46e5"))
        fig.update_layout(height=60 + 24 * len(probs), margin=dict(l=10, r=10, t=10, b=10),
                          xaxis=dict(range=[0, 1], tickformat=".0%"), yaxis=dict(type="category", autorange="reversed"))
        st.plotly_chart(fig, config={"displayModeBar": False}, key="why-step-bars")
        st.caption(f"After {k} step(s): support loss {row['support_loss']:.3f} (from {rows[0]['support_loss']:.3f} "
                   f"before any step). The last step is the answer above.")
        if row["moved"]:
            names, values = zip(*sorted(row["moved"].items()))
            fig = go.Figure(go.Bar(x=values, y=names, orientation="h", marker_color="#94a3b8"))
            fig.update_layout(height=60 + 18 * len(names), margin=dict(l=10, r=10, t=10, b=10),
                              xaxis_title="mean change of the layer's weights at this step",
                              yaxis=dict(autorange="reversed"))
            st.plotly_chart(fig, config={"displayModeBar": False}, key="why-moved")
