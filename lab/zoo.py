"""The model zoo: every algorithm trained by the lab itself to its published floor, and shipped.

A *recipe* (``lab/recipes.json``, the one place they are declared) names a training config, the
published figures of its paper and the floors the lab's model must reach. ``python -m lab zoo
train NAME`` trains it as an ordinary run of the run store; a recipe whose model is shipped
continues from it (``init_from: zoo:NAME``, its weights and step count), so a recipe too long for
one sitting goes on in the next. ``ship`` writes the run's best checkpoint, weights only, to
``assets/zoo/NAME.pt`` with a manifest ``NAME.json`` (recipe, steps, wall time, machine, sha256,
measured accuracies). ``verify`` (:mod:`lab.zoo_verify`) meta-tests every shipped model on the
recipe's test protocol and says which rows are under their floor.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from lab import runs
from lab.config import TrainConfig
from lab.data import SPLIT_SCHEMES
from lab.device import describe_machine
from lab.experts import train_clustered
from lab.training import check_config, train as train_run

RECIPES_FILE = Path(__file__).with_name("recipes.json")
TASKS = {"5w1s": (5, 1), "5w5s": (5, 5), "20w1s": (20, 1), "20w5s": (20, 5)}
TRANSFER = {"mnist:10w1s": ("mnist", 10, 1), "mnist:10w5s": ("mnist", 10, 5)}  # all of another dataset's classes
# The expected calibration error (15 bins) of those queries, at the temperature the model ships with.
CALIBRATION_TASKS = {"mnist:10w5s ece": ("mnist", 10, 5)}
# beats_sgd: learned-opt against plain SGD from the same weights; beats_global: cluster experts against their
# global model on the mixed source; cluster_ari: the global model's task clusters against the true sources.
FLOOR_KINDS = (*TASKS, *TRANSFER, *CALIBRATION_TASKS, "lake_error", "beats_sgd", "beats_global", "cluster_ari")
LOWER_IS_BETTER = ("lake_error", *CALIBRATION_TASKS)
MAX_MODEL_BYTES = 2 * 2**20
MAX_ZOO_BYTES = 20 * 2**20
# Fields a run may change without leaving its recipe: the budget, where it runs, what it starts from.
FREE_FIELDS = ("steps", "minutes", "device", "vectorize", "precision", "init_from", "data_dir", "val_every",
               "val_episodes", "log_every")


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    paper: str
    config: TrainConfig
    published: dict
    floors: dict
    tasks: tuple[str, ...] = tuple(TASKS)  # the rows of the reproduction table
    join: tuple[str, ...] = ()  # recipes whose shipped models it joins into one (lab.zoo_join), instead of training

    @property
    def protocol(self) -> str:
        """``lake`` for the background-trained models, ``accuracy`` (Vinyals test split) otherwise."""
        return "lake" if "lake_error" in self.floors else "accuracy"


def recipes() -> dict[str, Recipe]:
    """Every recipe of ``recipes.json``, its config validated."""
    out = {}
    for name, entry in json.loads(RECIPES_FILE.read_text()).items():
        runs.check_name(name)
        unknown = set(entry.get("floors", {})) - set(FLOOR_KINDS)
        if unknown:
            raise ValueError(f"recipe {name}: unknown floor(s) {', '.join(sorted(unknown))}")
        tasks = tuple(entry.get("tasks", TASKS))
        unknown = set(tasks) - set(TASKS) - set(TRANSFER) - set(CALIBRATION_TASKS)
        if unknown:
            raise ValueError(f"recipe {name}: unknown task(s) {', '.join(sorted(unknown))}")
        join = tuple(entry.get("join", ()))
        if join:  # the first member's config, with a tower for each member's
            missing = [m for m in join if m not in out]
            if missing or len(join) < 2:
                raise ValueError(f"recipe {name}: joins {', '.join(join)}; it needs two or more recipes declared "
                                 "before it")
            first = out[join[0]].config
            config = first.replace(hparams={**first.hparams, "towers": sum(out[m].config.hparams.get("towers", 1)
                                                                               for m in join)})
        else:
            config = TrainConfig(**entry["config"])
        out[name] = Recipe(name, entry["summary"], entry.get("paper", ""), config, entry.get("published", {}),
                           entry.get("floors", {}), tasks, join)
    return out


def recipe(name: str) -> Recipe:
    known = recipes()
    if name not in known:
        raise ValueError(f"the zoo has no recipe {name!r}; choose one of {', '.join(known)}")
    return known[name]


def model_path(name: str) -> Path:
    return runs.zoo_dir() / f"{runs.check_name(name)}.pt"


def manifest_path(name: str) -> Path:
    return model_path(name).with_suffix(".json")


def read_manifest(name: str) -> dict | None:
    return runs.read_json(manifest_path(name)) if model_path(name).is_file() else None


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_model(name: str) -> dict:
    """The manifest of a shipped model whose file is whole; a missing or damaged one raises ``ValueError``."""
    path, manifest = model_path(name), read_manifest(name)
    if manifest is None:
        raise ValueError(f"zoo:{name} is not shipped yet (python -m lab zoo train {name})")
    if sha256(path) != manifest.get("sha256"):
        raise ValueError(f"zoo:{name} is damaged: {path.name} does not match the sha256 of its manifest")
    runs.load_model(path)  # a file that matches but cannot be built is refused too
    return manifest


# --------------------------------------------------------------------------- training


RECIPE_DEFAULTS = ("n_query", "meta_batch", "meta_lr", "lr_schedule", "hparams")


def recipe_defaults(algorithm: str, dataset: str) -> dict:
    """The settings a new run of ``algorithm`` starts from: those of its zoo recipe (queries, meta-batch,
    rates, schedule, hyper-parameters; the training way too on the recipe's own dataset)."""
    rec = recipes().get(algorithm)
    if rec is None:
        return {}
    config = rec.config.to_dict()
    names = RECIPE_DEFAULTS + (("train_way",) if dataset == rec.config.dataset else ())
    return {k: config[k] for k in names if config[k] is not None and config[k] != {}}


def recipe_config(name: str, device: str = "auto", steps: int | None = None) -> TrainConfig:
    """The recipe's config, starting from the shipped model when there is one, else from the recipe's own
    ``init_from`` (a model it fine-tunes, whose weights and step count it continues). Cluster experts
    start from their base each time: they fine-tune in minutes."""
    rec = recipe(name)
    warm = _shipped_of_recipe(rec) and rec.config.algorithm != "clustered"
    return rec.config.replace(device=device, steps=steps or rec.config.steps,
                              init_from=f"{runs.ZOO_PREFIX}{name}" if warm else rec.config.init_from)


def train(name: str, minutes: float | None = None, runs_dir=None, device: str = "auto",
          steps: int | None = None) -> Iterator[dict]:
    """Train recipe ``name`` as a new run (from the shipped model if any), for at most ``minutes`` of
    this sitting, then ship its best checkpoint. Yields the training's records, then the manifest."""
    if recipe(name).join:
        raise ValueError(f"zoo:{name} is not trained: it joins {', '.join(recipe(name).join)} (python -m lab zoo train "
                         f"{name} joins them once they are shipped)")
    config = recipe_config(name, device, steps)
    check_config(config)
    run_dir = runs.create_run(runs_dir or runs.default_runs_dir(), config,
                              stem=f"zoo-{name}-{datetime.now():%Y%m%d-%H%M%S}")
    yield {"run_dir": str(run_dir), "from_step": _start_step(config)}
    if config.algorithm == "clustered":
        yield from train_clustered(config.replace(minutes=minutes), run_dir)
    else:
        yield from train_run(config, run_dir, time_limit_s=60 * minutes if minutes else None)
    yield {"manifest": ship(name, run_dir)}


def _start_step(config: TrainConfig) -> int:
    if not config.init_from:
        return 0
    return int(runs.load_checkpoint(runs.resolve_source(config.init_from)).get("step") or 0)


def _differences(rec: Recipe, config: TrainConfig) -> list[str]:
    def settled(c: TrainConfig) -> dict:  # no split scheme is the dataset's default one
        return c.to_dict() | {"split_scheme": c.split_scheme or SPLIT_SCHEMES[c.dataset][0]}

    mine, theirs = settled(rec.config), settled(config)
    return [k for k in mine if k not in FREE_FIELDS and mine[k] != theirs.get(k)]


def _check_fits(rec: Recipe, config: TrainConfig) -> None:
    differ = _differences(rec, config)
    if differ:
        raise ValueError(f"that run is not recipe {rec.name}'s: it differs in {', '.join(differ)}")


def _shipped_of_recipe(rec: Recipe) -> dict:
    """The shipped manifest of ``rec`` if its model was trained by the recipe as it stands, else ``{}``:
    a recipe that changed starts again from its own start, and its old sittings leave the manifest."""
    m = read_manifest(rec.name) or {}
    try:
        return m if m and not _differences(rec, TrainConfig.from_dict(m.get("config") or {})) else {}
    except ValueError:
        return {}


def ship(name: str, run_dir) -> dict:
    """Write the best checkpoint of ``run_dir`` (a run of recipe ``name``) into the zoo, with its manifest."""
    rec, run_dir = recipe(name), Path(run_dir)
    if rec.join:
        raise ValueError(f"zoo:{name} ships no run: it joins the shipped {', '.join(rec.join)} (python -m lab zoo train {name})")
    config = TrainConfig.from_dict(runs.read_json(run_dir / "config.json") or {})
    _check_fits(rec, config)
    previous = _shipped_of_recipe(rec)
    sittings = [s for s in previous.get("sittings", []) if s.get("run") != run_dir.name]
    earlier = next((s for s in previous.get("sittings", []) if s.get("run") == run_dir.name), None)
    if earlier:
        from_step = earlier["from_step"]
    elif config.init_from:  # the shipped model it continued, or the model its recipe fine-tunes
        from_step = previous["step"] if previous else _start_step(config)
    else:
        from_step = 0
    status = runs.read_status(run_dir)
    out = model_path(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.new")
    exported = runs.export_model(run_dir, tmp)
    worse = _worse_than_shipped(exported.get("best_val"), previous)
    if worse:
        tmp.unlink()
        raise ValueError(f"zoo:{name} stays as shipped: {worse}")
    others = sum(p.stat().st_size for p in out.parent.glob("*.pt") if p != out)
    if exported["bytes"] > MAX_MODEL_BYTES or others + exported["bytes"] > MAX_ZOO_BYTES:
        tmp.unlink()
        raise ValueError(f"zoo:{name} would take {exported['bytes']:,} bytes: the caps are {MAX_MODEL_BYTES:,} a "
                         f"model and {MAX_ZOO_BYTES:,} in all ({others:,} taken)")
    calibration = calibrate_file(tmp, config)
    os.replace(tmp, out)
    sittings.append({"run": run_dir.name, "from_step": from_step, "to_step": status.get("step"),
                     "wall_s": round(status.get("elapsed_s") or 0.0, 1), "machine": describe_machine(),
                     "device": status.get("device"), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
                     "curve": _validation_curve(run_dir)})
    manifest = {
        "name": name, "recipe": rec.summary, "paper": rec.paper, "config": exported["config"],
        "step": exported["step"], "trained_steps": status.get("step"), "recipe_steps": rec.config.steps,
        "val_accuracy": exported["best_val"], "wall_time_s": round(sum(s["wall_s"] for s in sittings), 1),
        "sittings": sittings, "calibration": calibration, "bytes": out.stat().st_size, "sha256": sha256(out),
        "measured": previous.get("measured", {}) if previous.get("step") == exported["step"] else {},
    }
    runs.write_json(manifest_path(name), manifest)
    return manifest


def recalibrate(name: str) -> dict:
    """Fit the shipped model's adaptation rates, temperature and doubt rule again on its recipe's
    validation split (its weights stay as they are), and write them into its file and manifest. The
    measurements of the manifest go, since they no longer describe the file: ``zoo verify --record``
    takes them again."""
    manifest = check_model(name)
    path = model_path(name)
    config = TrainConfig.from_dict(runs.load_checkpoint(path)["config"])
    tmp = path.with_name(f".{path.name}.new")
    shutil.copyfile(path, tmp)
    try:
        calibration = calibrate_file(tmp, config)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    manifest |= {"calibration": calibration, "bytes": path.stat().st_size, "sha256": sha256(path), "measured": {}}
    runs.write_json(manifest_path(name), manifest)
    return manifest


def _worse_than_shipped(best_val, previous: dict) -> str | None:
    """Why a run's best checkpoint must not replace the shipped model of the same recipe: it was never
    validated, or it validates below the shipped one (the same seeded validation episodes). None if it may."""
    if best_val is None or best_val < 0:
        return "the run has no validated checkpoint"
    shipped = previous.get("val_accuracy")
    if shipped is not None and best_val < shipped:
        return f"the run's best meta-validation accuracy {100 * best_val:.2f}% is below the shipped {100 * shipped:.2f}%"
    return None


def calibrate_file(path: Path, config: TrainConfig) -> dict:
    """Fit the temperature and doubt rule of the checkpoint at ``path`` on its recipe's own validation split
    (:func:`lab.calibration.fit_on_validation`: 10-way 5-shot episodes, fewer ways where the split has
    fewer classes) and write them into it. Returns how they were fitted, for the manifest; a split too
    small to fit on leaves the checkpoint at T = 1 and says why."""
    from lab.calibration import fit_on_validation, write_calibration

    _, model = runs.load_model(path)
    try:
        result = fit_on_validation(model, config, adaptation=True)
    except ValueError as err:
        return {"temperature": 1.0, "not_fitted": str(err)}
    write_calibration(path, result)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items() if k not in ("doubt", "metric")}


def _validation_curve(run_dir: Path) -> list[list[float]]:
    """``[step, meta-validation accuracy, seconds into the sitting]`` at each validation of the run."""
    return [[r["step"], round(r["val_accuracy"], 4), round(r.get("elapsed_s") or 0.0, 1)]
            for r in runs.read_jsonl(run_dir / "metrics.jsonl") if r.get("val_accuracy") is not None]


def learning_curve(name: str) -> list[dict]:
    """Recipe ``name``'s meta-validation accuracy against steps and training hours, across its sittings.

    Hours count from the recipe's first step: each sitting adds the wall time of those before it. Of a
    sitting shipped without its curve only two points are known: its end (steps and hours, not the
    accuracy) and, if the shipped checkpoint is its, that checkpoint's step and accuracy."""
    m = read_manifest(name) or {}
    points, seconds_before = [], 0.0
    for s in m.get("sittings", []):
        wall = s.get("wall_s") or 0.0
        curve = s.get("curve")
        if curve is None:
            curve = [[s.get("to_step"), None, wall]]
            if s.get("from_step", 0) < m.get("step", -1) <= (s.get("to_step") or 0):
                at_end = m["step"] == s.get("to_step")
                curve = ([[m["step"], m.get("val_accuracy"), wall]] if at_end else
                         [[m["step"], m.get("val_accuracy"), None]] + curve)
        for step, accuracy, seconds in curve:
            hours = None if seconds is None else round((seconds_before + seconds) / 3600, 3)
            points.append({"step": step, "val_accuracy": accuracy, "hours": hours,
                           "sitting": s.get("run"), "device": s.get("device"), "machine": s.get("machine")})
        seconds_before += wall
    return points


def shipped() -> list[dict]:
    """The models the zoo ships, for the pages' choices: ``source`` (``zoo:NAME``), a label, the manifest."""
    out = []
    for name, rec in recipes().items():
        m = read_manifest(name)
        if m:
            val = f", {100 * m['val_accuracy']:.1f}% validation" if m.get("val_accuracy") is not None else ""
            out.append({"source": f"{runs.ZOO_PREFIX}{name}", "name": name, "algorithm": rec.config.algorithm,
                        "label": f"Zoo: {name} ({rec.summary.split(':')[0].split(',')[0]}; step {m['step']}{val})",
                        "manifest": m})
    return out


def status() -> list[dict]:
    """One row per recipe: what is shipped, how far it trained, and what was last measured."""
    rows = []
    for name, rec in recipes().items():
        m = read_manifest(name) or {}
        rows.append({"name": name, "algorithm": rec.config.algorithm, "shipped": bool(m), "step": m.get("step"),
                     "recipe_steps": rec.config.steps, "val_accuracy": m.get("val_accuracy"),
                     "wall_time_s": m.get("wall_time_s"), "measured": m.get("measured", {}), "floors": rec.floors})
    return rows
