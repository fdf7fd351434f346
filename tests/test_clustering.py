import json
import math
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from streamlit.testing.v1 import AppTest

from lab import jobs, runs
from lab.cli import main
from lab.clustering import (
    EMBEDDINGS, agreement, analyse, cluster_table, elbow_k, embed_support, embed_tasks,
    fit_feature_map, kmeans, load_source, scan_k, suggest_k,
)
from lab.config import TrainConfig
from lab.episodes import Episode, sample_episode
from lab.evaluation import evaluate_run, meta_test
from lab.experts import clustered_config, untrained_model
from lab.models import proto_logits, prototypes
from lab.training import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base_run(digits, tmp_path_factory):
    """A Prototypical Network meta-trained for a few seconds on the bundled digits."""
    config = TrainConfig(dataset="digits", n_way=5, k_shot=1, n_query=5, steps=20, val_every=20, val_episodes=10,
                         log_every=10, seed=0)
    run_dir = runs.create_run(tmp_path_factory.mktemp("runs"), config, "base")
    list(train(config, run_dir))
    return run_dir


@pytest.fixture(scope="module")
def base_model(base_run):
    return runs.load_model(base_run)[1]


@pytest.fixture(scope="module")
def mixed(omniglot, mnist):
    return load_source("mixed", "test")


@pytest.fixture(scope="module")
def clustered_run(base_run, omniglot, mnist):
    """Three cluster experts fine-tuned for a few steps on mixed tasks, trained from the command line."""
    runs_dir = base_run.parent
    assert main(["train", "--algorithm", "clustered", "--base", str(base_run), "--k", "3", "--source", "mixed",
                 "--steps", "6", "--meta-batch", "2", "--n-query", "3", "--val-episodes", "12", "--log-every", "2",
                 "--hparams", '{"tasks": 60}', "--runs-dir", str(runs_dir), "--name", "experts"]) == 0
    run_dir = runs_dir / "experts"
    config = TrainConfig.from_dict(runs.read_json(run_dir / "config.json"))
    return config, run_dir, runs.read_jsonl(run_dir / "metrics.jsonl")


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory):
    """A user's folder of images: six kinds of hand-made shapes, eight drawings of each."""
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for c in range(6):
        (root / f"shape{c}").mkdir()
        for i in range(8):
            image = Image.new("L", (64, 64), 255)
            pen = ImageDraw.Draw(image)
            x, y = (int(v) for v in rng.integers(6, 18, 2))
            box = [x, y, x + 30 + 4 * (c // 3), y + 30]
            [pen.ellipse, pen.rectangle, pen.line][c % 3](box, width=3 + 2 * (c // 3), **({} if c % 3 == 2 else {"outline": 0}))
            image.save(root / f"shape{c}" / f"{i}.png")
    return root


def relabel(episode: Episode, order: list[int]) -> Episode:
    """The same task with its classes renamed (class c becomes order[c]) and listed in the new order."""
    new_y = torch.tensor(order)[episode.support_y]
    keep = torch.argsort(new_y, stable=True)
    return episode._replace(support_x=episode.support_x[keep], support_y=new_y[keep])


def test_within_alphabet_tasks_take_all_their_classes_from_one_alphabet(omniglot):
    source = load_source("within-alphabet", "test")
    assert len(source.groups) == 20  # Omniglot's evaluation alphabets
    tasks = source.sample(30, 5, 1, 2, seed=4)
    for group, episode in zip(tasks.groups, tasks.episodes):
        pool = source.pools[source.groups.index(group)]
        assert {pool.class_groups[int(c)] for c in episode.classes} == {group}
    again = source.sample(30, 5, 1, 2, seed=4)
    assert again.groups == tasks.groups and torch.equal(again.batch().support_x, tasks.batch().support_x)


def test_the_mixed_source_draws_from_every_dataset_with_its_name_as_the_true_group(mixed):
    assert set(mixed.groups) == {"omniglot", "mnist", "digits"}
    tasks = mixed.sample(60, 5, 1, 0, seed=1)
    assert set(tasks.groups) == {"omniglot", "mnist", "digits"}
    assert tasks.batch().support_x.shape == (60, 5, 1, 28, 28)


@pytest.mark.parametrize("embedding", EMBEDDINGS)
def test_a_task_embedding_does_not_change_when_its_classes_are_reordered(mixed, base_model, embedding):
    tasks = mixed.sample(4, 5, 2, 0, seed=2)
    orders = [[2, 0, 4, 1, 3], [4, 3, 2, 1, 0]]
    for episode in tasks.episodes:
        plain = embed_support(base_model, episode.support_x[None], episode.support_y[None], 5, embedding)
        for order in orders:
            shuffled = relabel(episode, order)
            assert not torch.equal(shuffled.support_x, episode.support_x)
            moved = embed_support(base_model, shuffled.support_x[None], shuffled.support_y[None], 5, embedding)
            assert torch.allclose(moved, plain, atol=1e-5)
    whole = embed_tasks(base_model, tasks, embedding)
    assert np.abs(whole[0] - whole[1]).max() > 1e-3  # different tasks do get different embeddings


def test_the_batched_gradient_embedding_equals_the_gradient_of_each_task_alone(mixed, base_model):
    tasks = mixed.sample(3, 5, 1, 0, seed=5)
    batch = tasks.batch()
    embedded = embed_support(base_model, batch.support_x, batch.support_y, 5, "gradient")
    last = base_model.encoder.blocks[-1]
    for i, episode in enumerate(tasks.episodes):
        base_model.zero_grad()
        with torch.no_grad():
            hidden = base_model.encoder.blocks[:-1](episode.support_x)
        z = last(hidden).flatten(1)
        loss = torch.nn.functional.cross_entropy(proto_logits(z, prototypes(z, episode.support_y, 5)),
                                                 episode.support_y)
        loss.backward()
        expected = torch.cat([last[0].bias.grad, last[1].weight.grad, last[1].bias.grad, last[0].weight.grad.flatten()])
        assert torch.allclose(embedded[i], expected / expected.norm(), atol=1e-5)


def test_k_means_on_tasks_of_clearly_different_datasets_recovers_the_datasets(mixed):
    tasks = mixed.sample(90, 5, 1, 0, seed=0)
    encoder = untrained_model()  # even random convolutions tell Omniglot, MNIST and the 8x8 digits apart
    result = analyse(embed_tasks(encoder, tasks, "representation"), tasks.groups, 3, "representation")
    assert result["ari"] > 0.7 and result["nmi"] > 0.7
    assert sorted(row["dominant_group"] for row in result["clusters"]) == ["digits", "mnist", "omniglot"]
    shuffled = np.random.default_rng(0).permutation(tasks.groups)
    assert agreement(shuffled, result["labels"])["ari"] < 0.2  # the score can fail


def test_the_elbow_and_the_silhouette_find_well_separated_blobs():
    from sklearn.datasets import make_blobs

    points, truth = make_blobs(200, centers=[(0, 0), (10, 0), (0, 10), (10, 10)], cluster_std=0.8, random_state=0)
    scan = scan_k(points, range(1, 9))
    assert math.isnan(scan[0]["silhouette"]) and scan[0]["inertia"] > scan[-1]["inertia"]
    assert suggest_k(scan) == 4 and elbow_k(scan) == 4
    labels = kmeans(points, 4)["labels"]
    assert agreement(truth, labels)["ari"] == pytest.approx(1.0)
    table = cluster_table(labels, [f"blob{t}" for t in truth])
    assert sum(r["size"] for r in table) == 200 and all(r["purity"] == 1.0 for r in table)


def test_the_bic_counts_groups_of_unequal_size_and_spread_where_the_silhouette_settles_for_two():
    from sklearn.datasets import make_blobs

    # Two tight groups side by side and a wide one far away: the silhouette's best K is 2.
    points, _ = make_blobs([150, 150, 200], centers=[(0, 0), (4, 0), (30, 0)], cluster_std=[0.6, 0.6, 4.0],
                           random_state=0)
    scan = scan_k(points, range(1, 9))
    silhouettes = {r["k"]: r["silhouette"] for r in scan[1:]}
    assert max(silhouettes, key=silhouettes.get) == 2
    assert all(not math.isnan(r["bic"]) for r in scan) and suggest_k(scan) == 3


def test_routing_sends_each_training_task_to_the_expert_of_its_own_cluster(clustered_run, mixed):
    config, run_dir, _ = clustered_run
    _, model = runs.load_model(run_dir)
    hp = model.hparams
    tasks = load_source(hp.source, "train").sample(hp.tasks, config.n_way, config.k_shot, config.n_query, config.seed)
    raw = embed_tasks(model.base, tasks, hp.embedding)
    expected = kmeans(fit_feature_map(raw, hp.embedding)(raw), hp.k)["labels"]
    batch = tasks.batch()
    routed = model.route(batch.support_x, batch.support_y, config.n_way).numpy()
    assert (routed == expected).mean() >= 0.95  # the same nearest centroid, up to float rounding at the borders
    episode = mixed.sample(1, 5, 1, 5, seed=9).episodes[0]
    expert = int(model.route(episode.support_x, episode.support_y, 5)[0])
    ours = model.adapt(episode.support_x, episode.support_y, 5)(episode.query_x)
    theirs = model.experts[expert].adapt(episode.support_x, episode.support_y, 5)(episode.query_x)
    assert torch.equal(ours, theirs)


def test_each_expert_keeps_the_weights_that_did_best_on_its_validation_tasks(clustered_run):
    _, run_dir, records = clustered_run
    _, model = runs.load_model(run_dir)
    kept = runs.load_checkpoint(run_dir / "best.pt")["expert_steps"]
    assert len(kept) == 3 and all(0 <= s <= 2 for s in kept)
    for expert, steps in zip(model.experts, kept):  # 0 steps: fine-tuning did not help, so the base stays
        unchanged = torch.equal(expert.encoder.blocks[0][0].weight, model.base.encoder.blocks[0][0].weight)
        assert unchanged == (steps == 0)
    assert all("val_accuracy" in r for r in records if "loss" in r)  # validated at the end of every expert


def test_a_clustered_run_saves_reloads_and_evaluates(clustered_run, digits):
    config, run_dir, records = clustered_run
    assert {"config.json", "status.json", "metrics.jsonl", "best.pt"} <= {p.name for p in run_dir.iterdir()}
    status = runs.read_status(run_dir)
    assert status["state"] == "finished" and status["step"] == 6 and sum(status["cluster_sizes"]) == 60
    assert records[-1]["val_accuracy"] == status["best_val_accuracy"]
    assert [(r["step"], r["expert"]) for r in records if "loss" in r] == [(2, 0), (4, 1), (6, 2)]
    _, a = runs.load_model(run_dir)
    _, b = runs.load_model(run_dir)
    ra = meta_test(a, digits.pool("test"), 5, 1, 5, episodes=10, seed=1)
    rb = meta_test(b, digits.pool("test"), 5, 1, 5, episodes=10, seed=1)
    assert (ra["per_episode"] == rb["per_episode"]).all()
    assert ra["accuracy"] == pytest.approx(float(np.mean(ra["per_episode"]))) and ra["accuracy"] > 0.2  # chance: 1/5


def test_the_command_line_evaluates_compares_and_clusters(clustered_run, base_run, capsys):
    _, run_dir, _ = clustered_run
    assert main(["eval", str(run_dir), "--episodes", "10", "--n-query", "5", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["episodes"] == 10
    again = evaluate_run(run_dir, episodes=10, n_query=5, record=False)
    assert evaluated["accuracy"] == again["accuracy"] and evaluated["accuracy"] > 0.2  # chance: 1/5
    assert main(["compare", str(run_dir), str(run_dir), "--source", "mixed", "--episodes", "12", "--n-query", "3",
                 "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["difference"] == 0 and same["difference_ci95"] == 0 and same["episodes"] == 12
    assert same["source"] == "mixed" and sum(g["episodes"] for g in same["by_group"].values()) <= 12
    assert main(["cluster", str(base_run), "--source", "mixed", "--tasks", "40", "--k", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"k", "ari", "nmi", "silhouette", "inertia", "sizes", "clusters"} <= set(report)
    assert report["k"] == 3 and sum(report["sizes"]) == 40


def test_a_clustered_run_is_evaluated_on_its_own_source_with_the_accuracy_of_each_group(clustered_run, capsys):
    _, run_dir, _ = clustered_run
    assert main(["eval", str(run_dir), "--episodes", "12", "--n-query", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["source"] == "mixed" and result["split"] == "test" and result["episodes"] == 12
    assert set(result["by_group"]) <= {"omniglot", "mnist", "digits"}
    assert sum(g["episodes"] for g in result["by_group"].values()) == 12
    weighted = sum(g["accuracy"] * g["episodes"] for g in result["by_group"].values()) / 12
    assert weighted == pytest.approx(result["accuracy"])
    assert runs.read_jsonl(run_dir / "evaluations.jsonl")[-1]["source"] == "mixed"


def test_a_folder_of_images_joins_the_mixed_source_as_its_own_group(base_run, shapes_folder, capsys, omniglot, mnist):
    group = f"folder:{shapes_folder.name}"
    assert main(["cluster", str(base_run), "--source", "mixed", "--folder", str(shapes_folder), "--tasks", "80",
                 "--k", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert group in report["groups"] and sum(report["sizes"]) == 80
    assert main(["eval", str(base_run), "--source", "mixed", "--folder", str(shapes_folder), "--episodes", "40",
                 "--n-query", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    parts = result["by_group"]
    assert group in parts and parts[group]["episodes"] > 0
    assert sum(p["episodes"] for p in parts.values()) == 40
    overall = sum(p["accuracy"] * p["episodes"] for p in parts.values()) / 40
    assert overall == pytest.approx(result["accuracy"])  # the groups' accuracies make up the whole


def test_resuming_a_stopped_clustered_run_trains_its_experts_again(clustered_run, tmp_path, capsys):
    _, run_dir, _ = clustered_run
    copy = tmp_path / "experts"
    shutil.copytree(run_dir, copy)
    runs.write_status(copy, "stopped", step=2)
    assert main(["resume", str(copy)]) == 0
    status = runs.read_status(copy)
    assert status["state"] == "finished" and status["step"] == 6
    assert [r["step"] for r in runs.read_jsonl(copy / "metrics.jsonl") if "loss" in r] == [2, 4, 6]  # no repeats
    assert main(["resume", str(copy)]) == 2
    assert "only a stopped or interrupted run" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--algorithm", "clustered", "--steps", "1"], "needs --base"),
        (["train", "--algorithm", "clustered", "--base", "/nonexistent", "--steps", "1"], "not a trained run"),
        (["cluster", "/nonexistent/run"], "no checkpoint"),
    ],
)
def test_bad_clustering_requests_give_one_clear_line(args, message, capsys, tmp_path):
    assert main([*args, *(["--runs-dir", str(tmp_path)] if args[0] == "train" else [])]) == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- the Task Clusters page


def clusters_page(runs_dir, monkeypatch, zoo_dir=None, **state) -> AppTest:
    """The page on ``runs_dir``, with the zoo of ``zoo_dir`` (default: an empty one, so the runs decide)."""
    monkeypatch.setenv("LAB_RUNS_DIR", str(runs_dir))
    monkeypatch.setenv("LAB_ZOO_DIR", str(zoo_dir or Path(runs_dir) / "no-zoo"))
    at = AppTest.from_file(str(ROOT / "views" / "clusters.py"), default_timeout=300)
    at.session_state["n_tasks"] = 100
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def test_the_clusters_page_works_with_an_untrained_encoder_before_any_run(tmp_path, monkeypatch, omniglot, mnist):
    at = clusters_page(tmp_path, monkeypatch)
    assert not at.exception and not at.error
    assert "untrained" in at.info[0].value
    assert at.sidebar.selectbox(key="run").value.startswith("untrained")
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["ARI"]) > 0.5 and metrics["Tasks"] == "100"
    assert len(at.dataframe[0].value) == 3  # K starts at the number of true groups


def test_a_zoo_model_is_the_clusters_pages_first_choice_of_encoder(clustered_run, monkeypatch, tmp_path):
    _, run_dir, _ = clustered_run
    zoo_dir = tmp_path / "zoo"
    zoo_dir.mkdir()
    runs.export_model(run_dir.parent / "base", zoo_dir / "protonet-background.pt")
    (zoo_dir / "protonet-background.json").write_text(json.dumps({"step": 1}))
    at = clusters_page(run_dir.parent, monkeypatch, zoo_dir=zoo_dir)
    assert not at.exception and not at.error
    assert at.sidebar.selectbox(key="run").value == "zoo:protonet-background"
    assert "base" in at.sidebar.selectbox(key="run").options


def test_the_clusters_page_controls_redraw_the_clusters_and_show_the_experts(clustered_run, monkeypatch):
    _, run_dir, _ = clustered_run
    at = clusters_page(run_dir.parent, monkeypatch)
    assert not at.exception
    assert at.sidebar.selectbox(key="run").value == "base"
    table = at.dataframe[0].value
    assert list(table["size"]) and table["size"].sum() == 100
    assert {"global accuracy", "expert accuracy"} <= set(table.columns)  # the experts of this K exist
    labels = [m.label for m in at.metric]
    assert {"Global model", "Clustered experts", "Experts − global"} <= set(labels)
    at.sidebar.slider(key="k-mixed").set_value(5).run()
    assert len(at.dataframe[0].value) == 5 and "expert accuracy" not in at.dataframe[0].value.columns
    for key, value in [("embedding", "gradient"), ("method", "t-SNE"), ("dims", 3), ("colour", "true group")]:
        (at.sidebar.selectbox(key=key) if key == "embedding" else at.sidebar.radio(key=key)).set_value(value).run()
        assert not at.exception, key
    at.sidebar.selectbox(key="source").set_value("within-alphabet").run()
    assert not at.exception and at.sidebar.slider(key="k-within-alphabet").value == 20


def test_the_clusters_page_adds_a_users_folder_and_shows_a_task_picked_in_3_d(base_run, shapes_folder, monkeypatch,
                                                                           tmp_path):
    at = clusters_page(base_run.parent, monkeypatch, folder=str(tmp_path / "missing"))
    assert not at.exception and "image folder is left out" in at.error[0].value  # the page goes on without it
    assert at.metric[0].value == "100"
    at.sidebar.text_input(key="folder").set_value(str(shapes_folder)).run()
    assert not at.exception and not at.error
    assert f"folder:{shapes_folder.name}" in set(at.dataframe[0].value["dominant group"])
    at.sidebar.radio(key="dims").set_value(3).run()
    assert not at.image
    at.number_input(key="task3d").set_value(7).run()
    assert not at.exception and len(at.image) == 1 and any(m.value.startswith("**Task 7**") for m in at.markdown)


def test_the_train_button_starts_the_experts_in_a_background_process(clustered_run, monkeypatch, tmp_path):
    _, run_dir, _ = clustered_run
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    shutil.copytree(run_dir.parent / "base", runs_dir / "base")
    at = clusters_page(runs_dir, monkeypatch, steps=2)
    at.button[0].click().run()
    launched = at.session_state["launched"]
    pid = launched["pid"]
    try:
        assert os.getsid(pid) == pid  # its own session: it outlives the page
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert str(Path(launched["run"])).encode() in cmdline  # the one launcher of background runs trains it
        assert Path(launched["run"]).parent == runs_dir.resolve()
        config = json.loads((Path(launched["run"]) / "config.json").read_text())
        assert config["algorithm"] == "clustered" and config["steps"] == 2
    finally:
        os.killpg(pid, signal.SIGTERM)


def test_cluster_experts_started_by_the_one_launcher_finish_and_log_where_every_run_logs(base_run, tmp_path, omniglot,
                                                                                         mnist):
    config = clustered_config(base_run, k=2, source="mixed", hparams={"tasks": 40}, steps=4, meta_batch=2, n_query=3,
                              val_episodes=12, val_every=2, log_every=2)
    run_dir = jobs.start(tmp_path, config, "experts-in-the-background")
    deadline = time.time() + 240
    while time.time() < deadline and runs.read_status(run_dir)["state"] in ("queued", "running"):
        time.sleep(0.5)
    status = runs.read_status(run_dir)
    log = (run_dir / jobs.LOG_FILE).read_text()
    assert status["state"] == "finished", log[-2000:]
    assert status["step"] == 4 and sum(status["cluster_sizes"]) == 40
    assert "the base alone" in log and "Traceback" not in log
    assert runs.load_model(run_dir)[0].algorithm == "clustered"


def test_a_clustered_model_explains_a_prediction_by_the_expert_it_routes_to(clustered_run, digits):
    from lab.explain import explain

    _, run_dir, _ = clustered_run
    _, model = runs.load_model(run_dir)
    episode = sample_episode(digits.pool("test"), 5, 2, 1, np.random.default_rng(2))
    out = explain(model, episode.support_x, episode.support_y, episode.query_x[0], tuple("abcde"))
    expert = model.experts[int(model.route(episode.support_x, episode.support_y, 5)[0])]
    with torch.no_grad():
        expected = torch.softmax(expert.adapt(episode.support_x, episode.support_y, 5)(episode.query_x[:1])[0], -1)
    assert list(out["probabilities"].values()) == pytest.approx(expected.tolist(), abs=1e-5)
    assert len(out["neighbours"]) == 5 and np.isfinite(np.array(out["attribution"]["map"])).all()
    assert not out["adaptation"]["applies"]  # the experts here are Prototypical Networks
