"""Plotly figures of runs: pure functions from metric records to figures (no streamlit here)."""

from __future__ import annotations

import math
from numbers import Real

import plotly.graph_objects as go
from plotly.subplots import make_subplots

PALETTE = ("#4f46e5", "#0891b2", "#d97706", "#059669", "#dc2626", "#7c3aed", "#db2777", "#0d9488")
CURVES = {
    "val_accuracy": "Meta-validation accuracy",
    "accuracy": "Meta-training accuracy",
    "loss": "Meta-training loss",
    "tasks_per_s": "Tasks per second",
}
SHORT = {"val_accuracy": "Val. accuracy", "accuracy": "Train accuracy", "loss": "Train loss", "tasks_per_s": "Tasks/s"}
PERCENT = {"val_accuracy", "accuracy"}


def smooth(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased so the first points are not pulled to 0."""
    out, last, n = [], 0.0, 0
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(None)
            continue
        n += 1
        last = weight * last + (1 - weight) * v
        out.append(last / (1 - weight**n))
    return out


def series(metrics: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of ``key`` over the metric records that have it."""
    rows = [(r["step"], r[key]) for r in metrics if isinstance(r.get(key), Real) and "step" in r]
    return [s for s, _ in rows], [v for _, v in rows]


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _style(fig: go.Figure, height: int) -> go.Figure:
    fig.update_layout(template="plotly_white", height=height, margin=dict(l=10, r=10, t=40, b=10),
                      hovermode="x unified", font=dict(size=13),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0))
    fig.update_xaxes(showgrid=True, gridcolor="#eef0f4", zeroline=False)
    fig.update_yaxes(showgrid=True, gridcolor="#eef0f4", zeroline=False)
    return fig


def _curve(fig, metrics, key, smoothing, color, name, row=None, col=None, legend=False):
    """The raw values faded and their smoothed line on top, as TensorBoard and W&B draw them."""
    steps, values = series(metrics, key)
    at = dict(row=row, col=col) if row else {}
    fmt = ".1%" if key in PERCENT else ".4g"
    if smoothing > 0:
        fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", line=dict(color=color, width=1), opacity=0.25,
                                 name=f"{name} (raw)", showlegend=False, hoverinfo="skip"), **at)
    fig.add_trace(go.Scatter(x=steps, y=smooth(values, smoothing) if smoothing > 0 else values, mode="lines",
                             line=dict(color=color, width=2.2), name=name, showlegend=legend,
                             hovertemplate=f"%{{y:{fmt}}}<extra>{name}</extra>"), **at)


def _validation(fig, metrics, color, name, row=None, col=None, legend=False):
    """Meta-validation accuracy with its 95% confidence band (an error bar while there is one point)."""
    steps, acc = series(metrics, "val_accuracy")
    ci = [r.get("val_ci95") or 0.0 for r in metrics if isinstance(r.get("val_accuracy"), Real) and "step" in r]
    at = dict(row=row, col=col) if row else {}
    if len(steps) > 1:
        upper = [min(1.0, a + c) for a, c in zip(acc, ci)]
        lower = [max(0.0, a - c) for a, c in zip(acc, ci)]
        fig.add_trace(go.Scatter(x=steps + steps[::-1], y=upper + lower[::-1], mode="lines", fill="toself",
                                 fillcolor=_rgba(color, 0.15), line=dict(width=0), hoverinfo="skip",
                                 showlegend=False, name=f"{name} 95% CI"), **at)
    fig.add_trace(go.Scatter(x=steps, y=acc, mode="lines+markers", line=dict(color=color, width=2.2),
                             marker=dict(size=6), name=name, showlegend=legend, customdata=ci,
                             error_y=dict(type="data", array=ci, color=_rgba(color, 0.5)) if len(steps) == 1 else None,
                             hovertemplate=f"%{{y:.1%}} ± %{{customdata:.1%}}<extra>{name}</extra>"), **at)


def training_figure(metrics: list[dict], smoothing: float = 0.6, color: str = PALETTE[0]) -> go.Figure:
    """Four panels of one run: meta-training loss and accuracy, meta-validation accuracy with its
    95% band, and tasks per second."""
    fig = make_subplots(rows=2, cols=2, vertical_spacing=0.14, horizontal_spacing=0.08, shared_xaxes="all",
                        subplot_titles=(CURVES["loss"], CURVES["accuracy"], CURVES["val_accuracy"] + " (95% CI)",
                                        CURVES["tasks_per_s"]))
    _curve(fig, metrics, "loss", smoothing, color, "loss", 1, 1)
    _curve(fig, metrics, "accuracy", smoothing, color, "accuracy", 1, 2)
    _validation(fig, metrics, color, "val accuracy", 2, 1)
    _curve(fig, metrics, "tasks_per_s", smoothing, PALETTE[2], "tasks/s", 2, 2)
    for row, col in ((1, 2), (2, 1)):
        fig.update_yaxes(tickformat=".0%", row=row, col=col)
    if len(series(metrics, "val_accuracy")[0]) < 2:
        fig.update_yaxes(range=[0, 1.02], row=2, col=1)
    if not series(metrics, "val_accuracy")[0]:
        fig.add_annotation(text="after the first meta-validation", showarrow=False, x=0.5, y=0.5, xref="x3 domain",
                           yref="y3 domain", font=dict(color="#9ca3af"))
    fig.update_xaxes(title_text="outer step", row=2)
    fig.update_annotations(font_size=14)
    fig = _style(fig, 560)
    fig.update_layout(showlegend=False)
    return fig


def overlay_figure(runs: dict[str, list[dict]], key: str = "val_accuracy", smoothing: float = 0.6) -> go.Figure:
    """One curve per run (``{name: metric records}``); validation accuracy keeps its confidence band."""
    fig = go.Figure()
    for i, (name, metrics) in enumerate(runs.items()):
        color = PALETTE[i % len(PALETTE)]
        if key == "val_accuracy":
            _validation(fig, metrics, color, name, legend=True)
        else:
            _curve(fig, metrics, key, smoothing, color, name, legend=True)
    fig.update_layout(yaxis_title=CURVES.get(key, key), xaxis_title="outer step")
    if key in PERCENT:
        fig.update_yaxes(tickformat=".0%")
    return _style(fig, 440)


def difference_figure(pairs: list[dict]) -> go.Figure:
    """Paired differences of accuracy (each run minus the reference) with their 95% intervals."""
    labels = [f"{p['run_a']} − {p['run_b']}" for p in pairs]
    diffs = [p["difference"] for p in pairs]
    colors = [PALETTE[3] if d - p["difference_ci95"] > 0 else PALETTE[4] if d + p["difference_ci95"] < 0 else "#6b7280"
              for d, p in zip(diffs, pairs)]
    fig = go.Figure(go.Scatter(x=diffs, y=labels, mode="markers", marker=dict(size=12, color=colors),
                               error_x=dict(type="data", array=[p["difference_ci95"] for p in pairs], thickness=2),
                               hovertemplate="%{x:+.2%}<extra></extra>"))
    fig.add_vline(x=0, line=dict(color="#9ca3af", dash="dash"))
    fig.update_layout(xaxis_title="difference in test accuracy (paired 95% CI)", xaxis_tickformat="+.1%")
    fig.update_yaxes(automargin=True)
    return _style(fig, 120 + 50 * len(pairs))


def _is_number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def internals_figure(value) -> go.Figure | None:
    """A figure for one entry of ``model.internals()``, or None when it is not a shape we draw.

    ``{layer: number}`` gives bars; ``{series: {layer: number}}`` grouped bars (e.g. learned vs SGD);
    a list of numbers a line.
    """
    fig = None
    if isinstance(value, dict) and value and all(_is_number(v) for v in value.values()):
        fig = go.Figure(go.Bar(x=list(value), y=list(value.values()), marker_color=PALETTE[0]))
    elif isinstance(value, dict) and value and all(isinstance(v, dict) and all(_is_number(x) for x in v.values())
                                                   for v in value.values()):
        fig = go.Figure([go.Bar(x=list(v), y=list(v.values()), name=str(k), marker_color=PALETTE[i % len(PALETTE)])
                         for i, (k, v) in enumerate(value.items())])
        fig.update_layout(barmode="group")
    elif isinstance(value, list) and len(value) > 1 and all(_is_number(v) for v in value):
        fig = go.Figure(go.Scatter(y=value, mode="lines+markers", line=dict(color=PALETTE[0])))
    if fig is not None:
        fig.update_xaxes(tickangle=-30, automargin=True)
        _style(fig, 360)
    return fig
