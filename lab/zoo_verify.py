"""``zoo verify``: every shipped model meta-tested on its recipe's protocol (the Vinyals test split, Lake's
runs, another dataset's classes, or learned-opt against plain SGD, paired), each row against its floor;
the README's reproduction table is made from these rows."""

from __future__ import annotations

import time

from lab import runs
from lab.algorithms.inner import sgd
from lab.calibration import evaluate_calibration
from lab.clustering import cluster_report
from lab.data import load_dataset
from lab.device import describe_machine, pick_device
from lab.episodes import episode_stream
from lab.evaluation import episode_accuracies, meta_test, paired_comparison
from lab.experts import compare_on_source
from lab.lake import lake_error
from lab.zoo import (CALIBRATION_TASKS, LOWER_IS_BETTER, TASKS, TRANSFER, check_model, manifest_path,
                     model_path, read_manifest, recipe, recipes)


class _WithSGD:
    """The same model adapting by plain SGD at its ``inner_lr`` for the same number of steps."""

    def __init__(self, model):
        self.model, self.update = model, sgd(model.hparams.inner_lr)

    def eval(self):
        self.model.eval()

    def adapt(self, support_x, support_y, n_way):
        return self.model.adapt(support_x, support_y, n_way, update=self.update)


SGD_TASK = "5w1s minus SGD"  # learned-opt's row: its accuracy less plain SGD's from the same weights, paired
GLOBAL_TASK = "mixed 5w1s minus global"  # cluster experts' row: their accuracy less their global model's, paired
ARI_TASK = "mixed clusters ARI"  # the global model's task clusters at the suggested K against the true sources
PAIRED = (SGD_TASK, GLOBAL_TASK)  # rows that pass when a paired lead excludes zero
MIXED_TASKS = 500  # tasks clustered for the ARI row, as `python -m lab cluster` does by default


def _row(name: str, task: str, value: float, ci95: float, floor, published, higher_is_better: bool = True,
         **extra) -> dict:
    passed = None if floor is None else (value >= floor if higher_is_better else value <= floor)
    return {"model": name, "task": task, "value": value, "ci95": ci95, "floor": floor, "published": published,
            "passed": passed, **extra}


def _paired_row(name: str, task: str, difference: float, ci95: float, episodes: int) -> dict:
    """A row of a lead over a reference on the same episodes: it passes when the paired interval excludes zero."""
    low = difference - ci95
    return _row(name, task, difference, ci95, 0.0, None, episodes=episodes, lower_bound=low) | {"passed": low > 0}


def _ari_row(name: str, ari: float, suggested_k: int, k: int, floor: float, tasks: int) -> dict:
    """The clustering row: it passes when the suggested K is the experts' K and the ARI reaches its floor."""
    return _row(name, ARI_TASK, ari, None, floor, None, episodes=tasks, suggested_k=suggested_k, k=k) | {
        "passed": ari >= floor and suggested_k == k}


def verify_model(name: str, episodes: int = 1000, device: str = "auto", lake_runs: int = 20) -> tuple[list[dict], dict]:
    """The reproduction rows of one shipped model (values in percent; ``passed`` is None where there is
    no floor), and its manifest with the measurements filled in."""
    rec, manifest = recipe(name), check_model(name)
    torch_device = pick_device(device)
    config, model = runs.load_model(model_path(name), device=torch_device)
    pool = load_dataset(config.dataset, None, config.split_scheme, config.strokes).pool("test")
    rows = []
    if rec.protocol == "lake":
        result = lake_error(model, runs=lake_runs, device=torch_device, strokes=config.strokes)
        rows.append(_row(name, "lake_error", 100 * result["error"], 100 * result["ci95"], rec.floors["lake_error"],
                         rec.published.get("lake_error"), higher_is_better=False, episodes=lake_runs))
    # A calibration task's episodes are the transfer task's of the same shape: one pass answers both rows.
    calibrated = {}
    for dataset, n_way, k_shot in {CALIBRATION_TASKS[t] for t in rec.tasks if t in CALIBRATION_TASKS}:
        calibrated[dataset, n_way, k_shot] = evaluate_calibration(model_path(name), dataset=dataset, n_way=n_way,
                                                                  k_shot=k_shot, episodes=episodes, seed=0,
                                                                  device=device)
    for task in rec.tasks:
        if task in CALIBRATION_TASKS:
            result = calibrated[CALIBRATION_TASKS[task]]
            rows.append(_row(name, task, result["ece_after"], result["ece_after_ci95"], rec.floors.get(task), None,
                             higher_is_better=False, episodes=episodes, temperature=result["temperature"]))
            continue
        if task in TRANSFER and TRANSFER[task] in calibrated:
            result = calibrated[TRANSFER[task]]
            result = {"accuracy": result["accuracy"], "ci95": result["accuracy_ci95"]}
        elif task in TRANSFER:
            dataset, n_way, k_shot = TRANSFER[task]
            task_pool = load_dataset(dataset, strokes=config.strokes).pool("all")
            result = meta_test(model, task_pool, n_way, k_shot, 15, episodes, seed=0, device=torch_device)
        else:
            result = meta_test(model, pool, *TASKS[task], 15, episodes, seed=0, device=torch_device)
        rows.append(_row(name, task, 100 * result["accuracy"], 100 * result["ci95"], rec.floors.get(task),
                         rec.published.get(task), episodes=episodes))
    if rec.floors.get("beats_sgd"):
        stream = episode_stream(pool, 5, 1, 15, episodes, 0)
        pair = paired_comparison(episode_accuracies(model, stream, torch_device),
                                 episode_accuracies(_WithSGD(model), stream, torch_device))
        rows.append(_paired_row(name, SGD_TASK, 100 * pair["difference"], 100 * pair["difference_ci95"], episodes))
    if config.algorithm == "clustered":
        rows.extend(_cluster_rows(name, model, rec, episodes, torch_device, config.strokes))
    keep = ("value", "ci95", "episodes", "suggested_k", "k", "temperature")
    manifest["measured"] = {r["task"]: {k: r[k] for k in keep if k in r} for r in rows}
    manifest["measured_on"] = describe_machine()
    manifest["measured_at"] = time.strftime("%Y-%m-%d")
    return rows, manifest


def _cluster_rows(name: str, model, rec, episodes: int, device, strokes: str) -> list[dict]:
    """Cluster experts against their own global model on the mixed source's test tasks (paired), and
    the clusters that global model finds there (K suggested, not given)."""
    hp = model.hparams
    pair = compare_on_source(model, model.base, hp.source, 5, 1, 15, episodes, seed=0, device=device,
                             strokes=strokes)
    report = cluster_report(model.base, hp.source, MIXED_TASKS, None, hp.embedding, seed=0, strokes=strokes)
    return [_paired_row(name, GLOBAL_TASK, 100 * pair["difference"], 100 * pair["difference_ci95"], episodes),
            _ari_row(name, report["ari"], report["suggested_k"], hp.k, rec.floors["cluster_ari"], MIXED_TASKS)]


def verify(names=None, episodes: int = 1000, device: str = "auto", record: bool = False,
           lake_runs: int = 20) -> list[dict]:
    """Rows for every recipe (or ``names``); a recipe with no shipped model gives one failing row."""
    rows = []
    for name in names or list(recipes()):
        recipe(name)
        if read_manifest(name) is None:
            rows.extend(_unshipped_rows(name))
            continue
        model_rows, manifest = verify_model(name, episodes, device, lake_runs)
        rows.extend(model_rows)
        if record:
            runs.write_json(manifest_path(name), manifest)
    return rows


def _unshipped_rows(name: str, error: str = "is not shipped yet") -> list[dict]:
    """One failing row per floor of a recipe that has no model yet (or no measurement of it)."""
    rec = recipe(name)
    return [{"model": name, "task": task, "value": None, "ci95": None,
             "floor": None if isinstance(floor, bool) else floor, "published": rec.published.get(task),
             "passed": False, "error": f"zoo:{name} {error}"} for task, floor in rec.floors.items()]


def recorded_rows(names=None) -> list[dict]:
    """The rows :func:`verify` recorded last into each manifest (``verify --record``), without measuring."""
    rows = []
    for name in names or list(recipes()):
        rec, manifest = recipe(name), read_manifest(name)
        if manifest is None or not manifest.get("measured"):
            rows.extend(_unshipped_rows(name, "is not shipped yet" if manifest is None else "is not verified yet"))
            continue
        for task, m in manifest["measured"].items():
            if task in PAIRED:
                rows.append(_paired_row(name, task, m["value"], m["ci95"], m["episodes"]))
            elif task == ARI_TASK:
                rows.append(_ari_row(name, m["value"], m["suggested_k"], m["k"], rec.floors["cluster_ari"],
                                     m["episodes"]))
            else:
                rows.append(_row(name, task, m["value"], m["ci95"], rec.floors.get(task), rec.published.get(task),
                                 higher_is_better=task not in LOWER_IS_BETTER, episodes=m["episodes"],
                                 **{k: m[k] for k in ("temperature",) if k in m}))
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The reproduction table of the README from verify's rows."""
    lines = ["| model | task | published | the lab (± 95% CI) | floor | steps | wall time | machine |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        m = read_manifest(r["model"]) or {}
        missing = ("not verified yet" if "not verified" in r.get("error", "")
                   else "not shipped" if recipe(r["model"]).join else "not trained yet")
        if r["value"] is None:
            value = missing
        elif r["task"] in (ARI_TASK, "cluster_ari"):
            value = f"{r['value']:.3f} at suggested K = {r['suggested_k']}"
        elif r["task"] in CALIBRATION_TASKS:
            value = f"{r['value']:.3f} ± {r['ci95']:.3f}"
        else:
            value = f"{r['value']:.2f} ± {r['ci95']:.2f}"
        mark = "" if r["passed"] is None else (" ✓" if r["passed"] else " ✗")
        floor = "–" if r["floor"] is None else (f"≤ {r['floor']}" if r["task"] in LOWER_IS_BETTER else f"≥ {r['floor']}")
        if r["task"] in (SGD_TASK, "beats_sgd"):
            floor = "> 0 (plain SGD), paired"
        elif r["task"] in (GLOBAL_TASK, "beats_global"):
            floor = "> 0 (its global model), paired"
        elif r["task"] in (ARI_TASK, "cluster_ari"):
            floor = f"≥ {r['floor']}" + (f", K = {r['k']}" if r.get("k") else "")
        published = "–" if r.get("published") is None else f"{r['published']}"
        hours = f"{m['wall_time_s'] / 3600:.2f} h" if m.get("wall_time_s") else "–"
        where = (m.get("sittings") or [{}])[-1].get("machine", "–")
        lines.append(f"| {r['model']} | {r['task']} | {published} | {value}{mark} | {floor} | "
                     f"{m.get('step', '–')} | {hours} | {where} |")
    return "\n".join(lines)
