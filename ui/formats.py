"""How every page writes numbers and shows long work: one percentage format (one decimal, "81.1%")
in texts, tables and charts, durations, and a progress bar that engine calls report into."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator

import streamlit as st

PERCENT = ".1%"  # the lab's percentage format, for Python and for Plotly's d3 formats alike
# Streamlit's "percent" column format shows (decimals of the step - 2) decimals: a step of 0.001 gives one.
PERCENT_STEP = 0.001
PROGRESS_EVERY_S = 0.25  # a progress bar is redrawn at most this often (and at the end)


def percent(value) -> str:
    """'81.1%', or '–' when there is no value."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:{PERCENT}}"


def duration(seconds: float | None) -> str:
    """'2 h 05 min', '3 min 20 s', '12 s'."""
    if seconds is None:
        return "–"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def percent_column(label: str, help: str | None = None, *, bar: bool = False, width=None):
    """A table column of fractions shown as percentages with one decimal; ``bar`` draws a bar from 0 to 100%."""
    if bar:
        return st.column_config.ProgressColumn(label, min_value=0.0, max_value=1.0, format="percent",
                                               step=PERCENT_STEP, help=help, width=width)
    return st.column_config.NumberColumn(label, format="percent", step=PERCENT_STEP, help=help, width=width)


@contextlib.contextmanager
def progress_bar(what: str, unit: str = "episodes") -> Iterator[Callable[[int, int], None]]:
    """An ``st.progress`` bar for the work inside the block; yields ``progress(done, total)`` to pass to
    the engine, which moves the bar and writes "what: done of total unit". The bar goes when the block ends."""
    bar = st.progress(0.0, text=f"{what}…")
    last = 0.0

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if done < total and now - last < PROGRESS_EVERY_S:
            return
        last = now
        bar.progress(min(1.0, done / max(total, 1)), text=f"{what}: {done:,} of {total:,} {unit}")

    try:
        yield report
    finally:
        bar.empty()
