"""The lab's charts and number formats: useful from the first point, axes bounded to the data, tick
labels that never repeat, one percentage format."""

import math

import pytest

from ui.charts import (
    FEW_POINTS, PERCENT_TICK_STEP, curve_data, curve_spec, difference_figure, overlay_figure, percent_axis,
    value_axis,
)
from ui.formats import PERCENT_STEP, percent, percent_column


def tick_labels(axis: dict) -> list[str]:
    """The labels Plotly writes for an axis with a fixed ``dtick`` and a ``.N%`` tick format."""
    low, high = axis["range"]
    step, decimals = axis["dtick"], int(axis["tickformat"].lstrip("+.").rstrip("%"))
    first = math.ceil(low / step - 1e-9)
    ticks = [(first + i) * step for i in range(int((high - low) / step) + 2) if (first + i) * step <= high + 1e-12]
    return [f"{t:.{decimals}%}" for t in ticks]


@pytest.mark.parametrize("low, high", [(0.74, 0.755), (0.5, 0.5), (0.0, 0.01), (0.99, 1.0), (0.2, 0.95),
                                       (0.7491, 0.7502), (1.0, 1.0), (0.0, 0.0)])
def test_an_accuracy_axis_stays_within_0_and_100_percent_and_never_repeats_a_tick_label(low, high):
    axis = percent_axis(low, high)
    assert 0.0 <= axis["range"][0] < axis["range"][1] <= 1.0
    assert axis["range"][0] <= low + 1e-12 and high <= axis["range"][1] + 1e-12
    labels = tick_labels(axis)
    assert len(labels) >= 2 and len(labels) == len(set(labels)), labels
    assert axis["tickformat"] in (".0%", ".1%")  # never more decimals than the lab's one


def test_a_single_value_gets_room_around_it_and_a_loss_axis_stays_above_zero():
    low, high = value_axis([0.7])["range"]
    assert low < 0.7 < high and low >= 0
    assert value_axis([0.0, 0.01])["range"][0] == 0.0


def test_a_first_point_is_drawn_as_a_marker_and_many_points_as_a_line():
    metrics = [{"step": 2, "loss": 1.2, "accuracy": 0.5}]
    data = curve_data(metrics, "accuracy", smoothing=0.6)
    assert list(data["step"]) == [2] and list(data["value"]) == [0.5]
    spec = curve_spec("accuracy", len(data), smoothing=0.6)
    line = spec["layer"][-1]
    assert line["mark"]["point"]["filled"] is True
    assert line["encoding"]["y"]["axis"] == {"format": ".1~%", "tickMinStep": PERCENT_TICK_STEP}
    assert line["encoding"]["y"]["scale"] == {"zero": False}  # bounded to the data, not stretched to 0
    assert curve_spec("accuracy", FEW_POINTS + 1, smoothing=0.6)["layer"][-1]["mark"]["point"] is False


def test_ticks_half_a_point_apart_never_repeat_with_one_decimal():
    ticks = [round(i * PERCENT_TICK_STEP, 10) for i in range(int(1 / PERCENT_TICK_STEP) + 1)]
    labels = [f"{t:.1%}" for t in ticks]
    assert len(set(labels)) == len(labels)


def test_the_validation_band_is_kept_within_0_and_100_percent_and_a_single_point_gets_an_error_bar():
    metrics = [{"step": 10, "val_accuracy": 0.98, "val_ci95": 0.05}]
    data = curve_data(metrics, "val_accuracy")
    assert data["upper"][0] == 1.0 and data["lower"][0] == pytest.approx(0.93)
    assert curve_spec("val_accuracy", 1)["layer"][0]["mark"]["type"] == "rule"
    metrics.append({"step": 20, "val_accuracy": 0.9, "val_ci95": 0.02})
    assert curve_spec("val_accuracy", 2)["layer"][0]["mark"]["type"] == "area"


def test_an_empty_curve_says_when_its_first_point_comes():
    spec = curve_spec("loss", 0, empty="first point at step 10")
    assert spec["layer"][-1]["mark"]["text"] == "first point at step 10"


def test_the_overlay_marks_few_points_and_keeps_accuracy_within_100_percent():
    metrics = [{"step": 5, "accuracy": 0.99, "val_accuracy": 0.995, "val_ci95": 0.02}]
    fig = overlay_figure({"a": metrics}, "accuracy", smoothing=0.0)
    assert "markers" in fig.data[-1].mode
    assert fig.layout.yaxis.range[1] <= 1.0 and fig.layout.yaxis.tickformat in (".0%", ".1%")


def test_the_difference_chart_labels_its_ticks_with_a_sign_and_one_decimal_at_most():
    fig = difference_figure([{"run_a": "a", "run_b": "b", "difference": 0.003, "difference_ci95": 0.001}])
    assert fig.layout.xaxis.tickformat in ("+.0%", "+.1%")
    assert fig.layout.xaxis.range[0] <= 0.0 <= fig.layout.xaxis.range[1]


@pytest.mark.parametrize("value, text", [(0.81142, "81.1%"), (0.738, "73.8%"), (1.0, "100.0%"), (None, "–"),
                                         (float("nan"), "–")])
def test_every_percentage_is_written_with_one_decimal(value, text):
    assert percent(value) == text


def test_percentage_columns_show_one_decimal():
    for column in (percent_column("Test acc."), percent_column("Best val.", bar=True)):
        assert column["type_config"]["format"] == "percent" and column["type_config"]["step"] == PERCENT_STEP
