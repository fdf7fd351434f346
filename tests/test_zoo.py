"""The model zoo: recipes as data, training that continues from the shipped model, zoo: names, verification."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lab import runs, zoo, zoo_verify
from lab.algorithms import REGISTRY
from lab.cli import main
from lab.data import load_dataset
from lab.evaluation import meta_test
from lab.training import train

TINY = {
    "summary": "a few steps on the bundled digits", "paper": "test",
    "config": {"algorithm": "protonet", "dataset": "digits", "n_way": 5, "k_shot": 1, "n_query": 5,
               "meta_batch": 2, "meta_lr": 0.001, "lr_schedule": "cosine", "steps": 6, "val_every": 3,
               "val_episodes": 10, "log_every": 1},
    "published": {"5w1s": 99.0}, "floors": {"5w1s": 101.0, "mnist:10w1s": 0.0},
    "tasks": ["5w1s", "5w5s", "mnist:10w1s"],
}


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch):
    """A zoo folder of its own with one tiny recipe, and a runs folder."""
    recipes = tmp_path / "recipes.json"
    recipes.write_text(json.dumps({"tiny": TINY}))
    monkeypatch.setattr(zoo, "RECIPES_FILE", recipes)
    monkeypatch.setenv("LAB_ZOO_DIR", str(tmp_path / "zoo"))
    monkeypatch.setattr("lab.metric_fit.METRIC_EPISODES", 20)  # a tiny model's metric, on fewer episodes
    monkeypatch.setattr("lab.metric_fit.VIEW_EPISODES", 5)  # its views
    monkeypatch.setattr("lab.calibration.CALIBRATION_EPISODES", 20)  # and its temperature
    return tmp_path


def test_every_algorithm_of_the_registry_has_a_recipe_and_every_recipe_validates():
    recipes = zoo.recipes()
    algorithms = {r.config.algorithm for r in recipes.values()}
    assert set(REGISTRY) <= algorithms
    for rec in recipes.values():
        assert rec.floors, f"{rec.name} declares no floor"
        assert rec.config.lr_schedule in ("constant", "cosine") and rec.config.steps > 0
    assert recipes["protonet-background"].protocol == "lake"
    assert recipes["protonet-background"].config.split_scheme == "background"
    assert recipes["protonet-small1"].config.split_scheme == "small1"


def test_a_recipe_trains_ships_and_the_next_sitting_continues_from_the_shipped_model(tiny_zoo):
    records = list(zoo.train("tiny", runs_dir=tiny_zoo / "runs", steps=4))
    first = zoo.read_manifest("tiny")
    assert records[-1]["manifest"] == first and first["trained_steps"] == 4
    assert first["sittings"][0]["from_step"] == 0 and first["sha256"] == zoo.sha256(zoo.model_path("tiny"))
    shipped_weights = torch.load(zoo.model_path("tiny"), weights_only=True)["model"]

    records = list(zoo.train("tiny", runs_dir=tiny_zoo / "runs"))
    run_dir = Path(records[0]["run_dir"])
    assert records[0]["from_step"] == first["step"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["init_from"] == "zoo:tiny"
    steps = [r["step"] for r in records if "step" in r]
    assert steps[0] == first["step"] + 1 and steps[-1] == 6  # the step count goes on to the recipe's total
    second = zoo.read_manifest("tiny")
    assert [s["from_step"] for s in second["sittings"]] == [0, first["step"]]
    assert second["wall_time_s"] == pytest.approx(sum(s["wall_s"] for s in second["sittings"]))
    # The learning curve runs on across sittings: each validation once, its hours counted from the first step.
    curve = zoo.learning_curve("tiny")
    validations = [(d.name, r) for d in sorted((tiny_zoo / "runs").iterdir())
                   for r in runs.read_jsonl(d / "metrics.jsonl") if "val_accuracy" in r]
    assert [(p["sitting"], p["step"], p["val_accuracy"]) for p in curve] == \
        [(name, r["step"], round(r["val_accuracy"], 4)) for name, r in validations]
    hours = [p["hours"] for p in curve]
    assert hours == sorted(hours) and hours[-1] <= second["wall_time_s"] / 3600 + 1e-3
    first_sitting = sum(p["sitting"] == first["sittings"][0]["run"] for p in curve)
    assert all(h >= first["sittings"][0]["wall_s"] / 3600 - 1e-3 for h in hours[first_sitting:])
    # The second run started from the shipped weights: its step-0 validation scored them.
    _, model = runs.load_model(run_dir / "best.pt")
    if second["step"] == first["step"]:
        assert all(torch.equal(model.state_dict()[k], v) for k, v in shipped_weights.items())


def test_a_recipe_that_fine_tunes_another_model_starts_from_its_weights_and_step_count(tiny_zoo):
    list(zoo.train("tiny", runs_dir=tiny_zoo / "runs", steps=4))
    base = zoo.read_manifest("tiny")
    tuned = {**TINY, "config": {**TINY["config"], "init_from": "zoo:tiny", "strokes": "normalised", "steps": 7}}
    (tiny_zoo / "recipes.json").write_text(json.dumps({"tiny": TINY, "tiny-tuned": tuned}))
    records = list(zoo.train("tiny-tuned", runs_dir=tiny_zoo / "runs"))
    assert records[0]["from_step"] == base["step"]
    assert [r["step"] for r in records if "step" in r][-1] == 7
    manifest = zoo.read_manifest("tiny-tuned")
    assert manifest["sittings"][0]["from_step"] == base["step"] and manifest["config"]["strokes"] == "normalised"
    assert zoo.recipe_config("tiny-tuned").init_from == "zoo:tiny-tuned"  # the next sitting continues its own


def test_a_recipe_that_changed_starts_again_and_drops_the_old_recipes_sittings(tiny_zoo):
    list(zoo.train("tiny", runs_dir=tiny_zoo / "runs", steps=4))
    assert zoo.recipe_config("tiny").init_from == "zoo:tiny"
    changed = {**TINY, "config": {**TINY["config"], "augment": True}}
    (tiny_zoo / "recipes.json").write_text(json.dumps({"tiny": changed}))
    assert zoo.recipe_config("tiny").init_from is None  # the shipped model is not this recipe's
    records = list(zoo.train("tiny", runs_dir=tiny_zoo / "runs", steps=3))
    assert records[0]["from_step"] == 0
    manifest = zoo.read_manifest("tiny")
    assert len(manifest["sittings"]) == 1 and manifest["sittings"][0]["from_step"] == 0
    assert manifest["config"]["augment"] is True and manifest["measured"] == {}


def test_sittings_shipped_without_their_curve_are_known_at_the_shipped_checkpoint_and_their_ends(tiny_zoo):
    zoo.manifest_path("tiny").parent.mkdir(parents=True)
    zoo.model_path("tiny").write_bytes(b"")  # a manifest counts beside its model
    runs.write_json(zoo.manifest_path("tiny"), {"step": 2000, "val_accuracy": 0.97, "sittings": [
        {"run": "a", "from_step": 0, "to_step": 2000, "wall_s": 3600.0},
        {"run": "b", "from_step": 2000, "to_step": 3000, "wall_s": 1800.0},
        {"run": "c", "from_step": 2000, "to_step": 2500, "wall_s": 900.0, "curve": [[2250, 0.96, 450.0]]}]})
    points = [(p["sitting"], p["step"], p["val_accuracy"], p["hours"]) for p in zoo.learning_curve("tiny")]
    assert points == [("a", 2000, 0.97, 1.0), ("b", 3000, None, 1.5), ("c", 2250, 0.96, 1.625)]


def test_a_sitting_that_runs_out_of_time_stops_resumably_and_keeps_the_schedule_of_the_steps(tiny_zoo):
    config = zoo.recipe_config("tiny").replace(steps=10_000, val_every=5, log_every=1)
    run_dir = runs.create_run(tiny_zoo / "runs", config, "limited")
    records = list(train(config, run_dir, time_limit_s=4.0))  # the limit holds loading and the first steps
    status = runs.read_status(run_dir)
    assert status["state"] == "stopped" and (run_dir / "last.pt").exists()
    last = records[-1]
    assert "val_accuracy" in last  # the sitting ends validated, so best.pt holds its latest weights
    factor = 0.5 * (1 + math.cos(math.pi * (last["step"] - 1) / config.steps))
    assert last["meta_lr"] == pytest.approx(config.meta_lr * factor, rel=1e-6)
    more = list(train(config, run_dir, resume=True, time_limit_s=4.0))  # resumes like any stopped run
    assert more[0]["step"] > last["step"] and runs.read_status(run_dir)["state"] == "stopped"


def cli_json(capsys, *args) -> dict:
    assert main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


def test_zoo_names_resolve_wherever_a_run_is_taken(tiny_zoo, capsys):
    list(zoo.train("tiny", runs_dir=tiny_zoo / "runs", steps=3))
    result = cli_json(capsys, "eval", "zoo:tiny", "--episodes", "20", "--json")
    assert result["run"] == "zoo:tiny" and result["n_way"] == 5
    assert cli_json(capsys, "compare", "zoo:tiny", "zoo:tiny", "--episodes", "20", "--json")["difference"] == 0
    image = tiny_zoo / "digit.png"
    Image.fromarray(np.pad(np.full((8, 3), 255, np.uint8), 10)).save(image)
    out = cli_json(capsys, "predict", "--run", "zoo:tiny", "--image", str(image), "--support", "digits", "--json")
    assert out["model"] == "zoo:tiny" and len(out["probabilities"]) == 10
    assert cli_json(capsys, "export", "zoo:tiny", "--out", str(tiny_zoo / "copy.pt"), "--json")["bytes"] > 0
    out = cli_json(capsys, "cluster", "zoo:tiny", "--source", "mixed", "--tasks", "30", "--k", "3", "--json")
    assert out["run"] == "zoo:tiny" and out["k"] == 3
    _, model = runs.load_model("zoo:tiny")
    assert model.name == "protonet"
    curve = cli_json(capsys, "zoo", "curve", "tiny", "--json")["tiny"]
    assert [p["step"] for p in curve] == [3] and 0 <= curve[0]["val_accuracy"] <= 1
    assert main(["zoo", "curve", "tiny"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["step", "3"]


def test_a_damaged_zoo_model_is_refused_with_a_clear_message(tiny_zoo, capsys):
    list(zoo.train("tiny", runs_dir=tiny_zoo / "runs", steps=3))
    path = zoo.model_path("tiny")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="zoo:tiny is damaged"):
        zoo.check_model("tiny")
    assert main(["eval", "zoo:tiny", "--episodes", "5"]) == 2
    err = capsys.readouterr().err
    assert "cannot be read" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="has no model 'absent'"):
        runs.load_model("zoo:absent")


def test_verify_fails_a_row_under_its_floor_and_a_recipe_that_is_not_shipped(tiny_zoo, capsys):
    rows = zoo_verify.verify(["tiny"], episodes=10)  # not shipped: every floor fails, reported as not trained yet
    assert [(r["task"], r["passed"], r["value"]) for r in rows] == [("5w1s", False, None), ("mnist:10w1s", False, None)]
    assert "| tiny | 5w1s | 99.0 | not trained yet ✗ | ≥ 101.0 |" in zoo_verify.markdown_table(rows)
    list(zoo.train("tiny", runs_dir=tiny_zoo / "runs", steps=3))
    assert "| tiny | 5w1s | 99.0 | not verified yet ✗ |" in zoo_verify.markdown_table(zoo_verify.recorded_rows(["tiny"]))
    rows = zoo_verify.verify(["tiny"], episodes=10, record=True)
    assert zoo_verify.recorded_rows(["tiny"]) == rows  # the table is made again from the manifest alone
    capsys.readouterr()
    assert main(["zoo", "table", "tiny"]) == 0
    assert zoo_verify.markdown_table(rows) in capsys.readouterr().out
    by_task = {r["task"]: r for r in rows}
    assert by_task["5w1s"]["passed"] is False  # a floor of 101% cannot be met
    assert by_task["5w5s"]["passed"] is None  # no floor: reported, not judged
    assert by_task["mnist:10w1s"]["passed"] is True and by_task["mnist:10w1s"]["value"] > 10  # all ten digits
    assert zoo.read_manifest("tiny")["measured"]["5w1s"]["episodes"] == 10
    assert "| tiny | 5w1s | 99.0 |" in zoo_verify.markdown_table(rows)


def test_a_shipped_model_holds_its_temperature_and_verify_measures_its_calibration(tiny_zoo, mnist):
    calibrated = {**TINY, "tasks": ["mnist:10w5s", "mnist:10w5s ece"], "floors": {"mnist:10w5s ece": 0.0}}
    (tiny_zoo / "recipes.json").write_text(json.dumps({"tiny": calibrated}))
    list(zoo.train("tiny", runs_dir=tiny_zoo / "runs", steps=3))
    checkpoint = runs.load_checkpoint(zoo.model_path("tiny"))
    fitted = zoo.read_manifest("tiny")["calibration"]
    assert checkpoint["temperature"] == pytest.approx(fitted["temperature"], rel=1e-3) and checkpoint["doubt"]
    assert fitted["fitted_on"]["split"] == "val" and fitted["fitted_on"]["n_way"] == 8  # all 8 validation classes
    assert fitted["nll_after"] <= fitted["nll_before"] + 1e-4
    accuracy, row = zoo_verify.verify(["tiny"], episodes=20, record=True)
    assert row["task"] == "mnist:10w5s ece" and 0 < row["value"] < 1 and row["ci95"] > 0
    # The accuracy row comes from the calibration's pass over the same episodes, and says what meta_test says.
    config, model = runs.load_model(zoo.model_path("tiny"))
    alone = meta_test(model, load_dataset("mnist", strokes=config.strokes).pool("all"), 10, 5, 15, 20, seed=0)
    assert accuracy["task"] == "mnist:10w5s" and accuracy["episodes"] == 20
    assert accuracy["value"] == pytest.approx(100 * alone["accuracy"])
    assert accuracy["ci95"] == pytest.approx(100 * alone["ci95"])
    assert row["temperature"] == pytest.approx(checkpoint["temperature"])  # the temperature it ships with
    assert row["passed"] is False  # an ECE of exactly 0 is out of reach: lower is better, and judged so
    assert zoo_verify.recorded_rows(["tiny"]) == [accuracy, row]
    line = f"| tiny | mnist:10w5s ece | – | {row['value']:.3f} ± {row['ci95']:.3f} ✗ | ≤ 0.0 |"
    assert line in zoo_verify.markdown_table([row])


def test_shipping_a_run_of_another_recipe_is_refused(tiny_zoo):
    config = zoo.recipe("tiny").config.replace(meta_lr=0.01)
    run_dir = runs.create_run(tiny_zoo / "runs", config, "other")
    list(train(config.replace(steps=2), run_dir))
    with pytest.raises(ValueError, match="differs in meta_lr"):
        zoo.ship("tiny", run_dir)


def test_a_run_that_validates_below_the_shipped_model_leaves_it_shipped(tiny_zoo):
    list(zoo.train("tiny", runs_dir=tiny_zoo / "runs", steps=4))
    config = zoo.recipe("tiny").config.replace(steps=2)
    run_dir = runs.create_run(tiny_zoo / "runs", config, "short")  # a new start of the same recipe
    list(train(config, run_dir))
    best = runs.load_checkpoint(run_dir / "best.pt")["best_val"]
    manifest = zoo.read_manifest("tiny")
    runs.write_json(zoo.manifest_path("tiny"), {**manifest, "val_accuracy": best + 0.01})
    before = zoo.sha256(zoo.model_path("tiny"))
    with pytest.raises(ValueError, match=r"stays as shipped: .* is below the shipped"):
        zoo.ship("tiny", run_dir)
    assert zoo.sha256(zoo.model_path("tiny")) == before
    assert not list(zoo.model_path("tiny").parent.glob(".*.new"))
    runs.write_json(zoo.manifest_path("tiny"), {**manifest, "val_accuracy": best})
    assert zoo.ship("tiny", run_dir)["val_accuracy"] == best  # as good as the shipped one: it may replace it


def test_train_starts_from_the_recipe_settings_and_what_is_given_wins(tmp_path, capsys, omniglot):
    assert main(["train", "--algorithm", "protonet", "--dataset", "omniglot", "--steps", "1", "--val-episodes", "5",
                 "--meta-lr", "0.002", "--runs-dir", str(tmp_path), "--name", "defaults"]) == 0
    config = json.loads((tmp_path / "defaults" / "config.json").read_text())
    rec = zoo.recipe("protonet").config
    assert (config["train_way"], config["n_query"], config["lr_schedule"]) == (rec.train_way, rec.n_query,
                                                                              rec.lr_schedule)
    assert config["meta_lr"] == 0.002 and "from the protonet recipe" in capsys.readouterr().err


def test_cluster_experts_can_start_from_a_zoo_model_named_as_such(tiny_zoo):
    from lab.experts import clustered_config

    list(zoo.train("tiny", runs_dir=tiny_zoo / "runs", steps=2))
    config = clustered_config("zoo:tiny", k=2, source="mixed")
    assert config.hparams["base"] == "zoo:tiny" and config.dataset == "digits"
    assert [z["source"] for z in zoo.shipped()] == ["zoo:tiny"]


def test_cluster_experts_are_a_recipe_scored_against_their_global_model_and_their_clusters(tiny_zoo, omniglot, mnist):
    experts = {"summary": "experts on zoo:tiny", "paper": "test",
               "config": {"algorithm": "clustered", "dataset": "digits", "n_way": 5, "k_shot": 1, "n_query": 5,
                          "meta_batch": 2, "meta_lr": 0.0005, "steps": 4, "val_every": 2, "val_episodes": 10,
                          "log_every": 1,
                          "hparams": {"base": "zoo:tiny", "k": 3, "source": "mixed", "tasks": 30,
                                      "base_algorithm": "protonet", "base_hparams": {"distance": "euclidean"}}},
               "tasks": [], "floors": {"beats_global": True, "cluster_ari": 0.9}}
    (tiny_zoo / "recipes.json").write_text(json.dumps({"tiny": TINY, "tiny-experts": experts}))
    list(zoo.train("tiny", runs_dir=tiny_zoo / "runs", steps=2))
    assert [r["task"] for r in zoo_verify.verify(["tiny-experts"])] == ["beats_global", "cluster_ari"]  # not shipped

    for _ in range(2):  # experts fine-tune from their base every time, never from the experts shipped before
        records = list(zoo.train("tiny-experts", runs_dir=tiny_zoo / "runs"))
        assert records[0]["from_step"] == 0
        assert json.loads((Path(records[0]["run_dir"]) / "config.json").read_text())["init_from"] is None
    manifest = zoo.read_manifest("tiny-experts")
    assert manifest["step"] == 4 and len(manifest["sittings"]) == 2

    rows = zoo_verify.verify(["tiny-experts"], episodes=30, record=True)
    paired, clusters = rows
    assert paired["task"] == zoo_verify.GLOBAL_TASK and paired["episodes"] == 30
    assert paired["passed"] == (paired["value"] - paired["ci95"] > 0)
    assert clusters["task"] == zoo_verify.ARI_TASK and -1 <= clusters["value"] <= 1 and clusters["k"] == 3
    assert clusters["passed"] == (clusters["value"] >= 0.9 and clusters["suggested_k"] == 3)
    assert zoo_verify.recorded_rows(["tiny-experts"]) == rows
    table = zoo_verify.markdown_table(rows)
    assert f"| {zoo_verify.GLOBAL_TASK} | – |" in table and "> 0 (its global model), paired" in table
    assert f"at suggested K = {clusters['suggested_k']}" in table and "≥ 0.9, K = 3" in table


def test_the_shipped_zoo_is_whole_and_within_its_size_caps(monkeypatch):
    monkeypatch.setenv("LAB_ZOO_DIR", str(runs.ASSETS / "zoo"))
    models = sorted((runs.ASSETS / "zoo").glob("*.pt"))
    assert sum(p.stat().st_size for p in models) <= zoo.MAX_ZOO_BYTES
    for path in models:
        assert path.stem in zoo.recipes() and path.stat().st_size <= zoo.MAX_MODEL_BYTES
        manifest = zoo.check_model(path.stem)  # sha256 and a model the lab can build
        config, _ = runs.load_model(f"zoo:{path.stem}")
        assert manifest["step"] > 0 and config.algorithm == zoo.recipe(path.stem).config.algorithm
        assert '": "/' not in json.dumps(manifest)  # no absolute path of the machine that trained it


def test_default_names_the_zoo_drawing_model_once_it_is_shipped_and_the_assets_model_before(tiny_zoo):
    assert runs.resolve_source("default") == runs.DEFAULT_MODEL and runs.drawing_model() is None
    single, joined = (zoo.model_path(name) for name in ("protonet-draw", "protonet-draw-ensemble"))
    single.parent.mkdir(parents=True, exist_ok=True)
    single.write_bytes(runs.DEFAULT_MODEL.read_bytes())
    assert runs.resolve_source("default") == single
    joined.write_bytes(runs.DEFAULT_MODEL.read_bytes())  # the ensemble, once shipped, comes first
    assert runs.resolve_source("default") == joined and runs.drawing_model() == "protonet-draw-ensemble"


def test_a_joined_recipe_ships_its_members_as_one_model_only_when_it_validates_as_well_as_the_best(
        tiny_zoo, monkeypatch):
    from lab import zoo_join

    tmp_path = tiny_zoo
    seeded = {**TINY, "config": {**TINY["config"], "seed": 1}}
    pair = {"summary": "tiny and tiny-seed1 joined", "paper": "test", "join": ["tiny", "tiny-seed1"],
            "published": {}, "floors": {"5w1s": 0.0}, "tasks": ["5w1s"]}
    (tiny_zoo / "recipes.json").write_text(json.dumps({"tiny": TINY, "tiny-seed1": seeded, "pair": pair}))
    assert zoo.recipe("pair").config.hparams["towers"] == 2 and zoo.recipe("pair").config.seed == 0
    with pytest.raises(ValueError, match="zoo:pair is not trained: it joins tiny, tiny-seed1"):
        list(zoo.train("pair", runs_dir=tmp_path / "runs"))
    list(zoo.train("tiny", runs_dir=tmp_path / "runs", steps=3))
    with pytest.raises(ValueError, match=r"zoo:tiny-seed1 is not shipped yet"):
        zoo_join.train_joined("pair", episodes=8)
    list(zoo.train("tiny-seed1", runs_dir=tmp_path / "runs", steps=3))

    # The validation runs for real, on the same episodes for every model; setting the joined model's
    # scores shows both decisions: ship only beyond the interval of the paired difference to the best member.
    real = zoo_join.meta_test

    def joined_scores(value):
        def meta_test(model, *args, **kwargs):
            result = real(model, *args, **kwargs)
            if len(model.more_towers):
                result["per_episode"] = np.full_like(result["per_episode"], value)
            return result
        return meta_test

    monkeypatch.setattr(zoo_join, "meta_test", joined_scores(0.0))
    with pytest.raises(ValueError, match=r"zoo:pair: the joined model is not shipped: joined, the models answer 0.00% "
                                         r".* from zoo:tiny.* alone, not beyond the interval"):
        zoo_join.train_joined("pair", episodes=8)
    assert not zoo.model_path("pair").exists() and not list((tmp_path / "zoo").glob(".*"))
    assert "| pair | 5w1s | – | not shipped ✗ |" in zoo_verify.markdown_table(zoo_verify.recorded_rows(["pair"]))
    monkeypatch.setattr(zoo_join, "meta_test", joined_scores(1.0))
    manifest = zoo_join.train_joined("pair", episodes=8)
    assert manifest == zoo.check_model("pair")
    assert [m["name"] for m in manifest["members"]] == ["tiny", "tiny-seed1"]
    assert manifest["val_accuracy"] == 1.0 and manifest["val_gain"]["difference"] > manifest["val_gain"]["ci95"]
    assert manifest["members"][1]["sha256"] == zoo.sha256(zoo.model_path("tiny-seed1"))
    config, model = runs.load_model("zoo:pair")
    assert config.hparams["towers"] == 2 and "temperature" in runs.load_checkpoint(zoo.model_path("pair"))
    with pytest.raises(ValueError, match="ships no run: it joins the shipped tiny, tiny-seed1"):
        zoo.ship("pair", tmp_path / "runs")
    rows = zoo_verify.verify(["pair"], episodes=10)
    assert [r["task"] for r in rows] == ["5w1s"] and rows[0]["passed"]
