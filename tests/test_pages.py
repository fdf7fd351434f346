"""The lab's pages driven through ``app.py``'s navigation with AppTest, on real runs."""

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import torch
from streamlit.testing.v1 import AppTest

from lab import jobs, runs
from lab.algorithms import REGISTRY
from lab.algorithms.protonet import ProtoNet
from lab.config import TrainConfig, hparam_fields
from lab.fields import check_fields, choice
from lab.training import train
from ui.charts import internals_figure, overlay_figure, smooth
from ui.forms import config_query
from ui.live import phase_text

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dataset="digits", n_query=3, meta_batch=1, steps=6, val_every=3, val_episodes=5, log_every=1)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Workers and the pages compute on one thread: on a small shared machine two are far slower."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two short finished digits runs (trained in this process), the older first."""
    base = tmp_path_factory.mktemp("pair")
    out, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, seed in (("pair-a", 0), ("pair-b", 1)):
            config = TrainConfig(**TINY, seed=seed)
            run_dir = runs.create_run(base, config, name)
            list(train(config, run_dir))
            out.append(run_dir)
    finally:
        torch.set_num_threads(threads)
    return base, out


def open_page(page=None, query=None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    if page:
        at.query_params.update(query or {})
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, at.exception
    return at


def button(at, label: str):
    return next(b for b in at.button if b.label.startswith(label))


def chart_traces(at, key) -> list[dict]:
    chart = next(c for c in at.get("plotly_chart") if key in c.proto.id)
    return json.loads(chart.proto.spec)["data"]


def live_specs(at) -> list[dict]:
    """The Vega-Lite specs of the live panel's curves, in page order."""
    return [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]


def launch_button(at):
    return button(at, "Launch")


def test_the_home_page_lists_the_latest_runs(two_runs, monkeypatch):
    monkeypatch.setenv("LAB_RUNS_DIR", str(two_runs[0]))
    at = open_page()
    latest = at.dataframe[1].value
    assert list(latest["Run"]) == ["pair-b", "pair-a"]  # newest first
    assert set(latest["Status"]) == {"● finished"}


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("n_way", 30, "30-way episodes need 30 classes"),
        ("n_query", 400, "images per class"),
    ],
)
def test_the_meta_train_form_refuses_what_the_data_cannot_give_before_launching(runs_dir, setting, value, message):
    at = open_page("meta_train")
    at.number_input(key=setting).set_value(value).run()
    launch_button(at).click().run()
    assert not at.exception
    assert message in at.error[0].value and at.error[0].value.startswith("Not launched")
    assert not any(runs_dir.iterdir())


@pytest.mark.parametrize(
    "query, key, value, reason",
    [
        ({}, "meta_lr", -0.01, "Must be a positive number, not -0.01"),
        ({}, "meta_lr", 0.0, "Must be a positive number, not 0"),
        ({}, "steps", 0, "Must be a positive whole number, not 0"),
        ({}, "steps", 2.5, "Must be a whole number, not 2.5"),
        ({"time_limit": "true"}, "minutes", 0, "Must be a positive number, not 0"),
        ({}, "n_query", 0, "Must be a positive whole number, not 0"),
        ({}, "seed", -1, "Must be 0 or more, not -1"),
        ({}, "val_every", 0.5, "Must be a whole number, not 0.5"),
        ({"algorithm": "maml"}, "maml.inner_lr", -1.0, "Must be a positive number"),
        ({"algorithm": "maml"}, "maml.inner_steps", 1.5, "Must be a whole number, not 1.5"),
        ({}, "run_name", "no spaces", "is not allowed"),
        ({"dataset": "folder"}, "data_dir", "", "Enter the image folder"),
    ],
)
def test_the_form_refuses_an_invalid_value_under_its_field_and_keeps_launch_disabled(runs_dir, query, key, value,
                                                                                      reason):
    at = open_page("meta_train", query)
    if isinstance(value, str):
        at.text_input(key=key).input(value).run()
    else:
        assert not launch_button(at).proto.disabled
        at.number_input(key=key).set_value(value).run()
    assert not at.exception
    assert [e.value for e in at.error] and reason in at.error[0].value, [e.value for e in at.error]
    assert launch_button(at).proto.disabled
    assert "Not ready to launch" in at.caption[-1].value
    assert not any(runs_dir.iterdir())


def test_no_time_limit_is_a_choice_of_its_own_and_the_form_says_how_the_run_ends(runs_dir):
    at = open_page("meta_train")
    assert at.toggle(key="time_limit").value is False and "minutes" not in [n.key for n in at.number_input]
    assert "Ends after 1,000 steps: no time limit." in [c.value for c in at.caption]
    at.toggle(key="time_limit").set_value(True).run()
    at.number_input(key="minutes").set_value(2.5).run()
    assert "Ends at 1,000 steps or after 2.5 min" in " ".join(c.value for c in at.caption)
    assert not launch_button(at).proto.disabled


def form_values(at) -> dict:
    """The ``TrainConfig`` fields as the Meta-Train form shows them."""
    number = {n.key: n.value for n in at.number_input}
    select = {s.key: s.value for s in at.selectbox}
    whole = lambda v: int(v) if v is not None and float(v).is_integer() else v  # noqa: E731
    algorithm = select["algorithm"]
    hparams = {key.split(".", 1)[1]: whole(value) if isinstance(value, float) else value
               for key, value in {**number, **select, **{t.key: t.value for t in at.toggle}}.items()
               if key.startswith(f"{algorithm}.")}
    fields = ("n_way", "k_shot", "n_query", "train_way", "meta_batch", "steps", "seed", "val_every", "val_episodes",
              "log_every")
    return dict(algorithm=algorithm, dataset=select["dataset"], device=select["device"],
                lr_schedule=select["lr_schedule"], meta_lr=number["meta_lr"],
                minutes=number.get("minutes") if at.toggle(key="time_limit").value else None,
                hparams=hparams, **{name: whole(number[name]) for name in fields})


def test_a_link_with_bad_values_opens_the_form_with_defaults(runs_dir):
    at = open_page("meta_train", {"n_way": "abc", "algorithm": "nonexistent", "steps": "250"})
    assert at.number_input(key="n_way").value == 5 and at.selectbox(key="algorithm").value == "protonet"
    assert at.number_input(key="steps").value == 250


def test_a_run_launched_from_the_form_gets_exactly_the_values_it_shows(runs_dir):
    at = open_page("meta_train", {k: str(v) for k, v in TINY.items()})
    at.selectbox(key="lr_schedule").set_value("cosine").run()
    at.number_input(key="meta_lr").set_value(0.0025).run()
    at.number_input(key="seed").set_value(3).run()
    at.number_input(key="train_way").set_value(6).run()
    at.selectbox(key="protonet.distance").set_value("cosine").run()
    at.toggle(key="time_limit").set_value(True).run()
    at.number_input(key="minutes").set_value(0.5).run()
    at.text_input(key="run_name").input("shown").run()
    shown = form_values(at)
    launch_button(at).click().run()
    assert not at.error, at.error[0].value
    config = json.loads((runs_dir / "shown" / "config.json").read_text())
    assert {name: config[name] for name in shown if name != "hparams"} == {k: v for k, v in shown.items()
                                                                        if k != "hparams"}
    assert config["hparams"] == {**config["hparams"], **shown["hparams"]} and shown["hparams"]["distance"] == "cosine"
    assert (config["meta_lr"], config["minutes"], config["train_way"], config["seed"]) == (0.0025, 0.5, 6, 3)
    jobs.stop(runs_dir / "shown")  # only the config was wanted
    deadline = time.monotonic() + 120
    while jobs.is_active(runs.read_status(runs_dir / "shown")) and time.monotonic() < deadline:
        time.sleep(0.3)


def test_a_run_launched_from_the_form_trains_in_its_own_process_and_is_listed(runs_dir):
    at = open_page("meta_train", {k: str(v) for k, v in TINY.items()})
    at.text_input(key="run_name").input("from-form").run()
    launch_button(at).click().run()
    assert not at.error, at.error[0].value
    run_dir = runs_dir / "from-form"
    assert at.selectbox(key="watching").value == "from-form"
    assert json.loads((run_dir / "config.json").read_text()) == TrainConfig(**TINY).to_dict()
    assert runs.read_status(run_dir)["pid"] != os.getpid()  # a worker process, not this one
    deadline = time.monotonic() + 180
    while jobs.is_active(runs.read_status(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert runs.read_status(run_dir)["state"] == "finished", jobs.log_tail(run_dir)

    at.run()
    assert "Step 6 of 6" in at.get("progress")[0].proto.text
    titles = [spec["title"]["text"] for spec in live_specs(at)]
    assert titles == ["Meta-training loss", "Meta-training accuracy", "Meta-validation accuracy (95% CI)",
                      "Tasks per second"]
    at.switch_page("views/runs.py").run()
    table = at.dataframe[0].value
    assert list(table["Run"]) == ["from-form"] and list(table["Status"]) == ["● finished"]
    assert list(table["Step"]) == [6] and table["Best val."][0] > 0.2 and pd_isna(table["Test acc."][0])

    at.number_input(key="mt.episodes").set_value(20).run()
    button(at, "Meta-test").click().run()
    evaluations = runs.read_jsonl(run_dir / "evaluations.jsonl")
    assert len(evaluations) == 1 and evaluations[0]["episodes"] == 20 and evaluations[0]["split"] == "test"
    assert f"{evaluations[0]['accuracy']:.1%}" in at.metric[-1].value
    assert at.dataframe[0].value["Test acc."][0] == pytest.approx(evaluations[0]["accuracy"])  # no reload needed


def test_the_runs_page_overlays_runs_and_compares_them_on_the_same_episodes(two_runs, monkeypatch):
    monkeypatch.setenv("LAB_RUNS_DIR", str(two_runs[0]))
    at = open_page("runs")
    assert at.multiselect(key="overlay").value == ["pair-b", "pair-a"]
    assert {t["name"] for t in chart_traces(at, "overlay.chart") if t.get("showlegend")} == {"pair-a", "pair-b"}
    at.number_input(key="cmp.episodes").set_value(40).run()
    button(at, "Compare on the same test episodes").click().run()
    table = at.dataframe[1].value
    assert list(table["Run"]) == ["pair-b", "pair-a"]
    # on paired episodes the mean difference is the difference of the means
    assert table.iloc[1, 3] == pytest.approx(table["Test accuracy"][1] - table["Test accuracy"][0])
    assert table.iloc[1, 4] > 0 and pd_isna(table.iloc[0, 3])


def pd_isna(value) -> bool:
    return value is None or value != value


def test_new_run_from_a_config_opens_the_form_filled_in(two_runs, monkeypatch):
    monkeypatch.setenv("LAB_RUNS_DIR", str(two_runs[0]))
    at = open_page("runs", {"detail": "pair-b"})
    assert at.code[0].value.startswith("/meta_train?") and "seed=1" in at.code[0].value  # pair-b's seed
    button(at, "New run from this config").click().run()
    assert at.title[0].value == "Meta-Train"
    assert at.number_input(key="seed").value == 1 and at.number_input(key="steps").value == 6
    assert at.number_input(key="n_query").value == 3 and at.number_input(key="val_episodes").value == 5


def test_deleting_a_run_asks_for_confirmation_first(runs_dir):
    run_dir = runs.create_run(runs_dir, TrainConfig(**TINY), "doomed")
    runs.write_status(run_dir, "stopped")
    at = open_page("runs")
    button(at, "Delete this run").click().run()
    assert "cannot be undone" in at.warning[0].value and run_dir.exists()
    button(at, "Delete permanently").click().run()
    assert not run_dir.exists()
    assert "No runs yet" in at.info[0].value


@dataclass(frozen=True)
class ToyHparams:
    inner_steps: int = 3  # adaptation steps per task
    inner_lr: float = 0.4  # step size of the inner loop
    first_order: bool = False  # drop second derivatives
    head: Literal["linear", "cosine"] = "linear"
    init: str = field(default="zeros", metadata={"choices": ("zeros", "random")})
    mode: str = choice("fast", ("fast", "exact"))  # declared with lab.fields

    def __post_init__(self):
        check_fields(self)


class ToyLearner(ProtoNet):
    name = "toy-learner"
    summary = "A learner registered after the pages were written."
    Hparams = ToyHparams

    def internals(self):
        return {"inner_lr_per_layer": {"conv1": 0.1, "conv2": 0.2}, "steps": [1.0, 0.5, 0.25]}


def test_an_algorithm_registered_later_gets_its_own_form_fields(runs_dir, monkeypatch):
    monkeypatch.setitem(REGISTRY, ToyLearner.name, ToyLearner)
    fields = {f.name: f for f in hparam_fields(ToyLearner.name)}
    assert [(f.kind, f.choices) for f in fields.values()] == [
        ("int", ()), ("float", ()), ("bool", ()), ("str", ("linear", "cosine")), ("str", ("zeros", "random")),
        ("str", ("fast", "exact"))]
    assert fields["inner_lr"].help == "step size of the inner loop"

    at = open_page("meta_train", {"algorithm": ToyLearner.name, f"{ToyLearner.name}.inner_steps": "5"})
    assert at.number_input(key="toy-learner.inner_steps").value == 5
    assert at.number_input(key="toy-learner.inner_lr").value == pytest.approx(0.4)
    assert at.toggle(key="toy-learner.first_order").value is False
    assert at.selectbox(key="toy-learner.mode").options == ["fast", "exact"]
    at.number_input(key="steps").set_value(3).run()
    at.text_input(key="run_name").input("toy").run()
    at.selectbox(key="toy-learner.head").set_value("cosine").run()
    at.number_input(key="n_way").set_value(30).run()  # refused before launching: no worker needs the toy
    launch_button(at).click().run()
    assert "30-way" in at.error[0].value

    config = TrainConfig(algorithm=ToyLearner.name, **TINY, hparams={"head": "cosine"})
    model = ToyLearner(ToyLearner.make_hparams(config.hparams), 5)
    run_dir = runs.create_run(runs_dir, config, "toy")
    runs.save_checkpoint(run_dir / "best.pt", model, None, config, step=0)
    runs.write_status(run_dir, "finished")
    at = open_page("runs")
    labels = [m.value for m in at.markdown]
    assert "**inner lr per layer**" in labels and "**steps**" in labels


def test_the_config_link_round_trips_every_field():
    config = TrainConfig(dataset="omniglot", split_scheme="background", n_way=20, k_shot=5, train_way=60,
                         meta_lr=3e-4, minutes=2.5, seed=7, hparams={"distance": "cosine"})
    query = config_query(config.to_dict())
    assert query["split_scheme.omniglot"] == "background" and query["protonet.distance"] == "cosine"
    assert query["minutes"] == "2.5" and "data_dir" not in query


def test_smoothing_keeps_the_first_point_and_tends_to_the_mean():
    assert smooth([1.0, 3.0], 0.0) == [1.0, 3.0]
    out = smooth([2.0] * 5 + [float("nan")], 0.9)
    assert out[:5] == pytest.approx([2.0] * 5) and out[5] is None


def test_the_overlay_draws_one_named_curve_per_run_and_a_band_for_validation():
    metrics = [{"step": s, "loss": 1 / s, "val_accuracy": 0.5, "val_ci95": 0.1} for s in (1, 2, 3)]
    fig = overlay_figure({"a": metrics, "b": metrics}, "val_accuracy")
    assert [t.name for t in fig.data if t.showlegend] == ["a", "b"] and sum(t.fill == "toself" for t in fig.data) == 2
    fig = overlay_figure({"a": metrics}, "loss", smoothing=0.5)
    assert [t.name for t in fig.data if t.showlegend] == ["a"]


@pytest.mark.parametrize(
    "value, bars",
    [({"conv1": 0.1, "conv2": 0.3}, 1), ({"learned": {"w": 1.0}, "sgd": {"w": 2.0}}, 2), ([0.1, 0.2], 0),
     ("text", None), ({"nested": [1, 2]}, None)],
)
def test_internals_are_drawn_when_they_have_a_shape_we_know(value, bars):
    fig = internals_figure(value)
    assert (fig is None) == (bars is None)
    if fig is not None:
        assert sum(t.type == "bar" for t in fig.data) == bars


@pytest.mark.parametrize(
    "status, metrics, says",
    [
        ({"state": "queued", "pid": 1}, [], "Starting the training process"),
        ({"state": "running", "phase": "loading"}, [], "Loading the data and building the model"),
        ({"state": "running"}, [], "the first metric line comes at step 10"),
        ({"state": "running", "phase": "validating", "val_done": 40, "val_total": 200}, [{"step": 10}],
         "Meta-validating: 40 of 200 episodes"),
        ({"state": "running", "phase": "checkpoint"}, [{"step": 10}], "Writing the checkpoint"),
        ({"state": "running", "phase": "training"}, [{"step": 10}], "Training"),
        ({"state": "finished", "phase": None}, [{"step": 10}], None),
    ],
)
def test_the_live_panel_says_what_the_worker_is_doing(status, metrics, says):
    text = phase_text({"status": status, "config": {"log_every": 10}, "metrics": metrics})
    assert text == says if says is None else says in text


def test_a_run_being_validated_shows_the_episodes_done_of_planned(runs_dir):
    run_dir = runs.create_run(runs_dir, TrainConfig(**TINY), "validating")
    runs.write_status(run_dir, "running", step=3, phase="validating", val_done=2, val_total=5)  # owned by this process
    at = open_page("runs")
    texts = [p.proto.text for p in at.get("progress")]
    assert texts[0].startswith("Step 3 of 6") and "ETA after the first metric line" in texts[0]
    assert texts[1].startswith("Meta-validating: 2 of 5 episodes")
    assert len(live_specs(at)) == 4  # the curves are in place before their first point
    assert "first point at step 1" in json.dumps(live_specs(at)[0])


def test_the_runs_page_compares_a_run_with_a_zoo_model_on_the_same_episodes(two_runs, monkeypatch, tmp_path):
    zoo_dir = tmp_path / "zoo"
    zoo_dir.mkdir()
    runs.export_model(two_runs[1][0], zoo_dir / "protonet.pt")  # a digits model standing in as zoo:protonet
    (zoo_dir / "protonet.json").write_text(json.dumps({"step": 6, "val_accuracy": 0.5}))
    monkeypatch.setenv("LAB_ZOO_DIR", str(zoo_dir))
    monkeypatch.setenv("LAB_RUNS_DIR", str(two_runs[0]))
    at = open_page("runs")
    at.multiselect(key="overlay").set_value(["pair-b"]).run()
    at.multiselect(key="cmp.zoo").set_value(["zoo:protonet"]).run()
    at.number_input(key="cmp.episodes").set_value(40).run()
    button(at, "Compare on the same test episodes").click().run()
    table = at.dataframe[1].value
    assert list(table["Run"]) == ["pair-b", "zoo:protonet"]
    # zoo:protonet holds pair-a's weights, so it differs from pair-b as pair-a does
    assert table.iloc[1, 3] == pytest.approx(table["Test accuracy"][1] - table["Test accuracy"][0])
