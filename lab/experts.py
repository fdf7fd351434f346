"""Cluster experts: fine-tune one copy of a global meta-learner per cluster of tasks (found by the
library :mod:`lab.clustering`), and compare models on the tasks of a source.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np

from lab import runs
from lab.algorithms import build
from lab.clustering import TaskSet, embed_tasks, fit_feature_map, kmeans, load_source
from lab.config import TrainConfig
from lab.device import describe_device, pick_device
from lab.evaluation import episode_accuracies, paired_comparison
from lab.sitting import Sitting, check_finite


def compare_on_source(model_a, model_b, source: str, n_way: int, k_shot: int, n_query: int = 15,
                      episodes: int = 1000, seed: int = 0, device="cpu", data_dir: str | None = None,
                      folder: str | None = None, split: str = "test", strokes: str = "as-drawn",
                      strokes_b: str | None = None) -> dict:
    """Both models on the same ``episodes`` test tasks of ``source``, compared pairwise, overall and per true
    group; each meets the images in its own ``strokes`` (``strokes_b``: B's, when not A's)."""

    def draw(images: str):  # the same seed draws the same tasks in either images
        return load_source(source, split, data_dir, folder, images).sample(episodes, n_way, k_shot, n_query, seed)

    tasks = draw(strokes)
    tasks_b = tasks if strokes_b in (None, strokes) else draw(strokes_b)
    accs_a = episode_accuracies(model_a, tasks.episodes, device)
    accs_b = episode_accuracies(model_b, tasks_b.episodes, device)
    out = paired_comparison(accs_a, accs_b)
    out.update(n_way=n_way, k_shot=k_shot, n_query=n_query, seed=seed, source=source, split=split, by_group={})
    groups = np.array(tasks.groups)
    for g in tasks.group_names:
        mask = groups == g
        part = paired_comparison(accs_a[mask], accs_b[mask]) if mask.sum() > 1 else None
        if part:
            out["by_group"][g] = {key: part[key] for key in ("episodes", "accuracy_a", "accuracy_b", "difference",
                                                             "difference_ci95")}
    return out


# --------------------------------------------------------------------------- cluster experts


def clustered_config(base: str | Path, k: int = 3, source: str = "mixed", embedding: str = "representation",
                     hparams: dict | None = None, **fields):
    """The :class:`~lab.config.TrainConfig` of a ``clustered`` run that starts from the run ``base``.

    The dataset and split come from the base (so ``python -m lab eval`` of the clustered run
    meets the same test classes as the base's); ``fields`` override any other setting. By default
    each expert gets 100 fine-tuning steps of 4 tasks at a learning rate of 5e-4, validated every 25.
    """

    if str(base).startswith(runs.ZOO_PREFIX):  # a zoo model: named as such, never by its path
        base_config = runs.load_checkpoint(runs.resolve_source(base))["config"]
        base_name = str(base)
    else:
        base = Path(base)
        base_config = runs.read_json(base / "config.json") if base.is_dir() else None
        if not base_config or not (base / "best.pt").exists() and not (base / "last.pt").exists():
            raise ValueError(f"base: {base} is not a trained run folder (config.json and best.pt)")
        base_name = _base_name(base)
    if base_config["algorithm"] == "clustered":
        raise ValueError("base: give the run of a global meta-learner, not of another clustered model")
    values = {
        "algorithm": "clustered", "dataset": base_config["dataset"], "data_dir": base_config.get("data_dir"),
        "split_scheme": base_config.get("split_scheme"), "n_way": base_config["n_way"],
        "k_shot": base_config["k_shot"], "n_query": 5, "meta_batch": 4, "meta_lr": 5e-4, "steps": 100 * k,
        "val_every": 25, "val_episodes": 300,
    }
    values.update({key: value for key, value in fields.items() if value is not None})
    values["hparams"] = {**(hparams or {}), "base": base_name, "k": k, "source": source,
                         "embedding": embedding, "base_algorithm": base_config["algorithm"],
                         "base_hparams": base_config.get("hparams", {})}
    if values["hparams"].get("folder"):
        values["hparams"]["folder"] = str(Path(values["hparams"]["folder"]).expanduser().resolve())
    return TrainConfig(**values)


def _shares(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def fit_router(model, base, tasks: TaskSet, seed: int = 0) -> np.ndarray:
    """Embed ``tasks`` with ``base``, K-means them, and set ``model``'s router; returns each task's cluster."""
    hp = model.hparams
    raw = embed_tasks(base, tasks, hp.embedding)
    fmap = fit_feature_map(raw, hp.embedding, seed)
    fit = kmeans(fmap(raw), hp.k, seed)
    model.router.set(fmap.mean, fmap.components, fit["centroids"])
    return fit["labels"]


def train_clustered(config, run_dir: str | Path | None = None) -> Iterator[dict]:
    """Train cluster experts, yielding step records as :func:`lab.training.train` does.

    Draws ``tasks`` training tasks from the source's train split, embeds them with the base,
    K-means them, and fine-tunes one copy of the base per cluster on that cluster's tasks
    (``steps`` in all, shared equally; ``meta_batch`` tasks a step). Every ``val_every`` steps an
    expert is measured on the validation tasks routed to its cluster (``val_episodes`` tasks of the
    source's validation split in all), and it keeps its best weights, which may be the base's own.
    The run is saved as ``best.pt``. A stop request ends the fine-tuning early, still saving.
    """
    with Sitting(run_dir) as sitting:
        yield from _fine_tune(config, sitting)


def _fine_tune(config, sitting: Sitting) -> Iterator[dict]:
    """The body of :func:`train_clustered`, inside its sitting."""
    hp = build(config).hparams  # validated
    device = pick_device(config.device)
    run_dir = sitting.run_dir
    data_root = config.data_dir if config.dataset != "folder" else None
    start, step, reason = time.perf_counter(), 0, "finished"
    elapsed = lambda: time.perf_counter() - start  # noqa: E731
    sitting.status(None, step=0, device=describe_device(device)["name"], error=None)
    _, base = runs.load_model(hp.base, device=device)
    tasks = load_source(hp.source, "train", data_root, hp.folder, config.strokes).sample(
        hp.tasks, config.n_way, config.k_shot, config.n_query, config.seed)
    val_tasks = load_source(hp.source, "val", data_root, hp.folder, config.strokes).sample(
        config.val_episodes, config.n_way, config.k_shot, config.n_query, config.seed + 1)
    model = build(config).to(device)
    for net in (model.base, *model.experts):
        net.load_state_dict(base.state_dict())
    labels = fit_router(model, base, tasks, config.seed)
    sizes = np.bincount(labels, minlength=hp.k).tolist()
    val_batch = val_tasks.batch()
    val_labels = model.route(val_batch.support_x, val_batch.support_y, config.n_way).numpy()
    rng = np.random.default_rng(config.seed)
    budget = config.minutes * 60 / hp.k if config.minutes else math.inf
    kept_steps = []
    for c, (expert, share) in enumerate(zip(model.experts, _shares(config.steps, hp.k))):
        members, cursor, began = rng.permutation(np.flatnonzero(labels == c)), 0, time.perf_counter()
        mine = [val_tasks.episodes[i] for i in np.flatnonzero(val_labels == c)]
        score = lambda: float(episode_accuracies(expert, mine, device).mean()) if mine else 0.0  # noqa: E731
        best, best_state, best_step = score(), copy.deepcopy(expert.state_dict()), 0  # the base itself
        optimizer = expert.configure_optimizer(config.meta_lr)
        window = []
        for s in range(share if len(members) else 0):
            if sitting.stop_requested:
                reason = "stopped"
                break
            if time.perf_counter() - began >= budget:
                break
            idx = members[(cursor + np.arange(config.meta_batch)) % len(members)]
            cursor += config.meta_batch
            expert.train()
            out = expert.outer_loss(tasks.batch(idx).to(device))
            check_finite(out.loss, step + 1, f"the loss of expert {c}")
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            step += 1
            sitting.step = step
            window.append((out.loss.item(), out.accuracy.item()))
            validate = (s + 1) % config.val_every == 0 or s == share - 1
            if step % config.log_every and not validate:
                continue
            progress = min(1.0, step / config.steps)
            record = {"step": step, "expert": c, "cluster_size": sizes[c],
                      "loss": float(np.mean([w[0] for w in window])),
                      "accuracy": float(np.mean([w[1] for w in window])),
                      "elapsed_s": elapsed(), "progress": progress,
                      "eta_s": elapsed() / max(progress, 1e-9) - elapsed()}
            if validate:
                record["val_accuracy"] = score()
                if record["val_accuracy"] > best:
                    best, best_step = record["val_accuracy"], s + 1
                    best_state = copy.deepcopy(expert.state_dict())
            window = []
            if run_dir is not None:
                runs.append_jsonl(run_dir / "metrics.jsonl", record)
            sitting.status(None, step=step, progress=progress, eta_s=record["eta_s"],
                           elapsed_s=record["elapsed_s"])
            yield record
        expert.load_state_dict(best_state)
        kept_steps.append(best_step)
        if reason == "stopped":
            break
    model.eval()
    val_accuracy = float(episode_accuracies(model, val_tasks.episodes, device).mean())
    base_val = float(episode_accuracies(base, val_tasks.episodes, device).mean())
    record = {"step": step, "val_accuracy": val_accuracy, "base_val_accuracy": base_val,
              "best_val_accuracy": val_accuracy, "cluster_sizes": sizes, "expert_steps": kept_steps,
              "elapsed_s": elapsed(), "progress": 1.0, "eta_s": 0.0}
    if run_dir is not None:
        runs.save_checkpoint(run_dir / "best.pt", model, None, config, step=step, best_val=val_accuracy,
                             base_val=base_val, cluster_sizes=sizes, expert_steps=kept_steps, elapsed_s=elapsed())
        runs.append_jsonl(run_dir / "metrics.jsonl", record)
    yield record
    sitting.finish(reason, step=step, progress=1.0 if reason == "finished" else step / config.steps,
                   eta_s=None, elapsed_s=elapsed(), best_val_accuracy=val_accuracy,
                   base_val_accuracy=base_val, cluster_sizes=sizes, expert_steps=kept_steps)


def _base_name(base: str | Path) -> str:
    """How a clustered run records its base: ``zoo:NAME`` as it is, a run folder by its full path."""
    return str(base) if str(base).startswith("zoo:") else str(Path(base).resolve())


def find_clustered_runs(runs_dir: str | Path, base: str | Path, source: str, embedding: str, k: int,
                        folder: str | None = None) -> list[dict]:
    """The clustered runs of ``runs_dir`` made from ``base`` with this source (and image folder), embedding
    and K, newest first."""

    wanted = {"base": _base_name(base), "source": source, "embedding": embedding, "k": k,
              "folder": str(Path(folder).expanduser().resolve()) if folder else None}
    found = []
    for row in runs.list_runs(runs_dir):
        hparams = (runs.read_json(Path(row["path"]) / "config.json") or {}).get("hparams", {})
        if row["algorithm"] == "clustered" and all(hparams.get(key) == value for key, value in wanted.items()):
            found.append(row)
    return found


def clustered_run_name(base: str | Path, source: str, k: int) -> str:
    """A fresh name for a run of ``k`` cluster experts of ``base`` on ``source``."""
    base = _base_name(base)
    stem = base.replace(":", "-") if base.startswith("zoo:") else Path(base).name
    return f"clustered-{stem[:32]}-{source}-k{k}-{datetime.now():%Y%m%d-%H%M%S}"


def untrained_model(seed: int = 0):
    """A freshly initialised Prototypical Network (for looking at clusters before any run is trained)."""
    return build(TrainConfig(algorithm="protonet", seed=seed)).eval()
