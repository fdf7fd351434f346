"""Figures of runs: pure functions from metric records to Plotly figures and Vega-Lite specs (no streamlit here)."""

from __future__ import annotations

import math
from numbers import Real

import plotly.graph_objects as go

PALETTE = ("#4f46e5", "#0891b2", "#d97706", "#059669", "#dc2626", "#7c3aed", "#db2777", "#0d9488")
CURVES = {
    "val_accuracy": "Meta-validation accuracy",
    "accuracy": "Meta-training accuracy",
    "loss": "Meta-training loss",
    "tasks_per_s": "Tasks per second",
}
SHORT = {"val_accuracy": "Val. accuracy", "accuracy": "Train accuracy", "loss": "Train loss", "tasks_per_s": "Tasks/s"}
PERCENT = {"val_accuracy", "accuracy"}
PERCENT_FORMAT = ".1%"  # the lab's one percentage format (ui.formats.PERCENT), in hover labels
FEW_POINTS = 30  # curves with at most this many points also mark each point, so a first point is visible
MIN_PERCENT_SPAN = 0.02  # an accuracy axis spans at least 2 points, so ticks 0.5 apart need one decimal at most


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


def nice_step(raw: float) -> float:
    """The 1, 2 or 5 times a power of ten at or above ``raw``."""
    if not raw > 0:
        return 1.0
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))


def percent_axis(low: float, high: float, ticks: int = 5, clip: bool = True, sign: str = "") -> dict:
    """An axis of fractions shown as percentages from ``low`` to ``high``: at least
    :data:`MIN_PERCENT_SPAN` wide, kept within 0-100% when ``clip`` (accuracies), with tick spacing
    and decimals that never repeat a label. ``sign="+"`` writes the sign of differences."""
    lo, hi = (0.0, 1.0) if clip else (-math.inf, math.inf)
    low, high = max(lo, low), min(hi, high)
    pad = max((high - low) * 0.08, (MIN_PERCENT_SPAN - (high - low)) / 2, 0.0)
    low, high = max(lo, low - pad), min(hi, high + pad)
    if high - low < MIN_PERCENT_SPAN * (1 - 1e-6):  # cut by 0% or 100%: widen it on the other side
        low, high = (low, low + MIN_PERCENT_SPAN) if low == lo else (high - MIN_PERCENT_SPAN, high)
    dtick = nice_step((high - low) / ticks)
    decimals = max(0, -math.floor(math.log10(dtick * 100) + 1e-9))
    return dict(range=[low, high], dtick=dtick, tick0=0.0, tickformat=f"{sign}.{decimals}%")


def value_axis(values: list[float]) -> dict:
    """A y-axis around ``values`` (a loss, a rate): a single value or a flat curve gets room around it,
    and it never goes below zero for values that cannot."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {}
    low, high = min(finite), max(finite)
    pad = (high - low) * 0.08 or max(abs(high) * 0.1, 1e-3)
    lower = low - pad if low < 0 else max(0.0, low - pad)
    return dict(range=[lower, high + pad])


def step_axis(steps: list[int]) -> dict:
    """An x-axis of outer steps from 0 to the last step, with whole-number ticks."""
    last = max(steps, default=1)
    return dict(range=[0, last * 1.04 + 0.5], dtick=max(1, nice_step(last / 6)), tick0=0)


def _accuracy_bounds(metrics: list[dict], key: str) -> tuple[float, float] | None:
    """Lowest and highest value of ``key`` with its 95% interval (validation) in ``metrics``."""
    _, values = series(metrics, key)
    if not values:
        return None
    ci = [r.get("val_ci95") or 0.0 for r in metrics if isinstance(r.get(key), Real) and "step" in r] \
        if key == "val_accuracy" else [0.0] * len(values)
    return min(v - c for v, c in zip(values, ci)), max(v + c for v, c in zip(values, ci))


def _mode(n: int) -> str:
    return "lines+markers" if n <= FEW_POINTS else "lines"


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
    fmt = PERCENT_FORMAT if key in PERCENT else ".4g"
    if smoothing > 0:
        fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", line=dict(color=color, width=1), opacity=0.25,
                                 name=f"{name} (raw)", showlegend=False, hoverinfo="skip"), **at)
    fig.add_trace(go.Scatter(x=steps, y=smooth(values, smoothing) if smoothing > 0 else values, mode=_mode(len(steps)),
                             line=dict(color=color, width=2.2), marker=dict(size=6, color=color), name=name,
                             showlegend=legend, hovertemplate=f"%{{y:{fmt}}}<extra>{name}</extra>"), **at)


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
                             hovertemplate=f"%{{y:{PERCENT_FORMAT}}} ± %{{customdata:{PERCENT_FORMAT}}}"
                                           f"<extra>{name}</extra>"), **at)


# --------------------------------------------------------------------------- live curves (Vega-Lite)
# The live panel draws its curves with Vega-Lite: Streamlit keeps a keyed Vega-Lite chart mounted and swaps
# its data when only the data changed, where a Plotly chart whose figure changed is mounted afresh at every
# refresh (blank for a moment, hover and zoom lost).

LIVE_HEIGHT = 250  # pixels of each live chart, title and axes included
LIVE_CURVES = ("loss", "accuracy", "val_accuracy", "tasks_per_s")
VEGA_PERCENT = ".1~%"  # one decimal at most, none when it is 0 ("75%", "75.5%")
PERCENT_TICK_STEP = 0.005  # ticks at least half a point apart, so one decimal never repeats a label


def curve_data(metrics: list[dict], key: str, smoothing: float = 0.0):
    """The rows of one live curve: ``step``, ``value`` (smoothed) and ``raw``; validation accuracy
    also has its 95% interval (``ci``, and ``lower``/``upper`` kept within 0-100%)."""
    import pandas as pd

    steps, values = series(metrics, key)
    frame = pd.DataFrame({"step": steps, "raw": values,
                          "value": smooth(values, smoothing) if smoothing > 0 and key != "val_accuracy" else values})
    if key == "val_accuracy":
        ci = [r.get("val_ci95") or 0.0 for r in metrics if isinstance(r.get(key), Real) and "step" in r]
        frame["ci"] = ci
        frame["lower"] = [max(0.0, v - c) for v, c in zip(values, ci)]
        frame["upper"] = [min(1.0, v + c) for v, c in zip(values, ci)]
    return frame


def curve_spec(key: str, points: int, smoothing: float = 0.0, color: str = PALETTE[0], empty: str | None = None,
               x_title: bool = True) -> dict:
    """The Vega-Lite spec of one live curve with ``points`` points (see :func:`curve_data`). It changes
    only when the look does (a first point, few points or many, smoothing on or off), so a refreshed
    chart keeps its place. ``empty`` is written across the chart while it has no point."""
    percent = key in PERCENT
    fmt = VEGA_PERCENT if percent else ".4~g"
    x = {"field": "step", "type": "quantitative", "title": "outer step" if x_title else None,
         "scale": {"zero": True}, "axis": {"tickMinStep": 1, "format": ",d"}}
    y = {"field": "value", "type": "quantitative", "title": None, "scale": {"zero": False},
         "axis": {"format": VEGA_PERCENT, "tickMinStep": PERCENT_TICK_STEP} if percent else {}}
    tooltip = [{"field": "step", "title": "step", "format": ",d"},
               {"field": "value", "title": SHORT[key], "format": fmt}]
    layers = []
    if key == "val_accuracy":
        y_ci = {"field": "lower", "type": "quantitative"}
        band = {"mark": {"type": "area", "opacity": 0.15, "color": color}} if points > 1 else \
            {"mark": {"type": "rule", "strokeWidth": 1.5, "opacity": 0.6, "color": color}}
        layers.append({**band, "encoding": {"x": x, "y": {**y_ci, "title": None}, "y2": {"field": "upper"}}})
        tooltip.append({"field": "ci", "title": "± 95% CI", "format": fmt})
    elif smoothing > 0:
        layers.append({"mark": {"type": "line", "strokeWidth": 1, "opacity": 0.25, "color": color},
                       "encoding": {"x": x, "y": {**y, "field": "raw"}}})
    marked = key == "val_accuracy" or points <= FEW_POINTS
    layers.append({"mark": {"type": "line", "strokeWidth": 2.2, "color": color,
                            "point": {"filled": True, "size": 45, "color": color} if marked else False},
                   "encoding": {"x": x, "y": y, "tooltip": tooltip}})
    if not points and empty:
        layers.append({"data": {"values": [{}]}, "mark": {"type": "text", "text": empty, "color": "#9ca3af",
                                                          "x": {"expr": "width / 2"}, "y": {"expr": "height / 2"}}})
    return {"title": {"text": CURVES[key] + (" (95% CI)" if key == "val_accuracy" else ""), "fontSize": 13,
                      "fontWeight": "normal"},
            "layer": layers}


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
    every = [m for metrics in runs.values() for m in metrics]
    if key in PERCENT:
        bounds = [b for b in (_accuracy_bounds(m, key) for m in runs.values()) if b]
        fig.update_yaxes(**percent_axis(min(b[0] for b in bounds), max(b[1] for b in bounds)) if bounds else
                         dict(range=[0, 1], tickformat=".0%"))
    else:
        fig.update_yaxes(**value_axis(series(every, key)[1]))
    fig.update_xaxes(**step_axis([r["step"] for r in every if "step" in r]))
    return _style(fig, 440)


def difference_figure(pairs: list[dict]) -> go.Figure:
    """Paired differences of accuracy (each run minus the reference) with their 95% intervals."""
    labels = [f"{p['run_a']} − {p['run_b']}" for p in pairs]
    diffs = [p["difference"] for p in pairs]
    colors = [PALETTE[3] if d - p["difference_ci95"] > 0 else PALETTE[4] if d + p["difference_ci95"] < 0 else "#6b7280"
              for d, p in zip(diffs, pairs)]
    fig = go.Figure(go.Scatter(x=diffs, y=labels, mode="markers", marker=dict(size=12, color=colors),
                               error_x=dict(type="data", array=[p["difference_ci95"] for p in pairs], thickness=2),
                               hovertemplate=f"%{{x:+{PERCENT_FORMAT}}}<extra></extra>"))
    fig.add_vline(x=0, line=dict(color="#9ca3af", dash="dash"))
    half = [p["difference_ci95"] if math.isfinite(p["difference_ci95"] or 0.0) else 0.0 for p in pairs]
    fig.update_layout(xaxis_title="difference in test accuracy (paired 95% CI)")
    fig.update_xaxes(**percent_axis(min(0.0, *(d - h for d, h in zip(diffs, half))),
                                    max(0.0, *(d + h for d, h in zip(diffs, half))), ticks=6, clip=False, sign="+"))
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
