"""``python -m lab``: the engine from the command line.

Every sub-command is a function ``cmd_NAME(args) -> int`` with its arguments declared in
``_parser``. Errors a user can act on (bad config, missing data, impossible episodes) are
printed as one line on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from lab import runs
from lab.clustering import EMBEDDINGS, SOURCES
from lab.data import DATASETS, DatasetUnavailable
from lab.device import DEVICE_CHOICES


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=float))


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, disable=None)


# --------------------------------------------------------------------------- datasets


def cmd_datasets(args) -> int:
    from lab.data import dataset_status, load_dataset

    out = {}
    for name, status in dataset_status(args.data_dir).items():
        entry = dict(status)
        if status["available"]:
            entry.update(load_dataset(name, args.data_dir).summary())
        out[name] = entry
    if args.json:
        _print_json(out)
    else:
        for name, entry in out.items():
            if not entry["available"]:
                print(f"{name:9s} not found ({entry['where']})")
                continue
            splits = ", ".join(f"{s} {v['classes']} classes / {v['images']} images" for s, v in entry["splits"].items())
            print(f"{name:9s} {entry['images']} images, {entry['labels']} labels; {entry['scheme']}: {splits}")
    return 0


# --------------------------------------------------------------------------- train / resume


def _config_from_args(args):
    from lab.config import TrainConfig
    from lab.zoo import recipe_defaults

    fields = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(TrainConfig) if f.name != "init_from"}
    given = {k: v for k, v in fields.items() if v is not None}
    taken = {k: v for k, v in recipe_defaults(args.algorithm, args.dataset).items() if k not in given}
    if taken:
        print(f"from the {args.algorithm} recipe of the zoo: "
              + ", ".join(f"{k} {json.dumps(v)}" for k, v in taken.items()), file=sys.stderr)
    return TrainConfig(**{**taken, **given})


def _drive(config, run_dir: Path, resume: bool, world) -> int:
    from lab.training import train

    bar = _progress(config.steps, config.algorithm) if world.is_main else None
    if bar is not None and resume:
        bar.update(runs.read_status(run_dir).get("step", 0))
    for record in train(config, run_dir, resume=resume):
        if bar is None:
            continue
        bar.update(record["step"] - bar.n)
        shown = {"loss": f"{record['loss']:.3f}", "acc": f"{record['accuracy']:.3f}"}
        if "val_accuracy" in record:
            shown["val"] = f"{record['val_accuracy']:.3f}"
        bar.set_postfix(shown)
    if bar is None:
        return 0
    bar.close()
    return _report_outcome(run_dir)


def _report_outcome(run_dir: Path) -> int:
    """How the run ended, on stderr, then its folder on stdout (last, for scripts)."""
    status = runs.read_status(run_dir)
    print(f"{status['state']} at step {status.get('step')}; best meta-validation accuracy "
          f"{status.get('best_val_accuracy')}", file=sys.stderr)
    print(run_dir)
    return 0


def _on_main(world, make):
    """``make()`` on rank 0, its value (or its ValueError) shared with every process."""
    from lab.distributed import broadcast_object

    try:
        outcome = ("ok", make()) if world.is_main else None
    except (ValueError, DatasetUnavailable) as err:
        outcome = ("error", str(err))
    kind, value = broadcast_object(outcome, world)
    if kind == "error":
        raise ValueError(value)
    return value


def cmd_train(args) -> int:
    from lab.distributed import init_from_env
    from lab.training import check_config

    config = _config_from_args(args)
    world = init_from_env(config.device)
    check_config(config)
    run_dir = _on_main(world, lambda: str(runs.create_run(args.runs_dir or runs.default_runs_dir(), config, args.name)))
    return _drive(config, Path(run_dir), resume=False, world=world)


def cmd_train_any(args) -> int:
    """``train``: cluster experts for ``--algorithm clustered``, else meta-training."""
    return cmd_train_clustered(args) if args.algorithm == "clustered" else cmd_train(args)


def cmd_train_clustered(args) -> int:
    from lab.experts import clustered_config, train_clustered

    if not args.base:
        raise ValueError("--algorithm clustered needs --base RUN_DIR, the run the experts start from")
    fields = {"n_way": args.n_way, "k_shot": args.k_shot, "n_query": args.n_query, "meta_batch": args.meta_batch,
              "meta_lr": args.meta_lr, "steps": args.steps, "minutes": args.minutes, "seed": args.seed,
              "device": args.device, "vectorize": args.vectorize, "precision": args.precision,
              "val_every": args.val_every, "val_episodes": args.val_episodes,
              "log_every": args.log_every}
    config = clustered_config(args.base, args.k, args.source, args.embedding,
                              args.hparams, **fields)
    run_dir = runs.create_run(args.runs_dir or runs.default_runs_dir(), config, args.name)
    bar = _progress(config.steps, "clustered")
    for record in train_clustered(config, run_dir):
        bar.update(record["step"] - bar.n)
        if "loss" in record:
            bar.set_postfix(expert=record["expert"], loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.3f}")
    bar.close()
    status = runs.read_status(run_dir)
    print(f"{status['state']} at step {status.get('step')}; validation accuracy {status.get('best_val_accuracy')} "
          f"(base {status.get('base_val_accuracy')}); cluster sizes {status.get('cluster_sizes')}", file=sys.stderr)
    print(run_dir)
    return 0


def cmd_cluster(args) -> int:
    from lab.clustering import cluster_report
    from lab.device import pick_device

    _, model = runs.load_model(args.run, device=pick_device(args.device))
    out = cluster_report(model, args.source, args.tasks, args.k, args.embedding, args.n_way, args.k_shot, args.split,
                         args.seed, args.data_dir, args.folder, args.max_k)
    out["run"] = str(args.run)
    if args.json:
        _print_json(out)
    else:
        if "scan" in out:
            print(f"suggested K {out['suggested_k']} (elbow at K {out['elbow_k']}, checked by the silhouette)")
        print(f"{out['source']}: {out['tasks']} tasks, {out['embedding']} embedding, K = {out['k']}: "
              f"ARI {out['ari']:.3f}, NMI {out['nmi']:.3f}, silhouette {out['silhouette']:.3f}, "
              f"inertia {out['inertia']:.1f}")
        for row in out["clusters"]:
            print(f"  cluster {row['cluster']:2d}: {row['size']:4d} tasks, {100 * row['purity']:5.1f}% "
                  f"{row['dominant_group']}")
    return 0


def cmd_resume(args) -> int:
    from lab.config import TrainConfig
    from lab.distributed import init_from_env

    run_dir = Path(args.run_dir)
    config = TrainConfig.from_dict(runs.read_json(run_dir / "config.json") or {})
    if config.algorithm == "clustered":
        return _restart_clustered(run_dir)
    world = init_from_env(config.device)

    def check() -> None:
        if not (run_dir / "last.pt").exists():
            raise ValueError(f"{run_dir} has no last.pt checkpoint to resume from")
        if runs.read_status(run_dir).get("state") == "running":
            raise ValueError(f"{run_dir} is still running")

    _on_main(world, check)
    return _drive(config, run_dir, resume=True, world=world)


def _restart_clustered(run_dir: Path) -> int:
    """Cluster experts keep no mid-way checkpoint (they fine-tune in minutes): resuming trains them again."""
    from lab.jobs import check_resumable, run_queued

    check_resumable(run_dir)
    print("cluster experts are trained again from the base run", file=sys.stderr)
    for _ in run_queued(run_dir):
        pass
    return _report_outcome(run_dir)


def _validation_line(record: dict) -> str:
    """A validated record in one line; a cluster experts' last record carries no training loss."""
    said = [f"loss {record['loss']:.4f}", f"accuracy {record['accuracy']:.3f}"] if "loss" in record else []
    said.append(f"meta-validation {record['val_accuracy']:.3f}")
    if "base_val_accuracy" in record:
        said.append(f"the base alone {record['base_val_accuracy']:.3f}")
    return f"step {record['step']}: " + ", ".join(said)


def cmd_run(args) -> int:
    from lab.config import TrainConfig
    from lab.distributed import init_from_env
    from lab.jobs import run_queued
    from lab.runs import NonFiniteLoss

    run_dir = Path(args.run_dir)
    world = init_from_env(TrainConfig.from_dict(runs.read_json(run_dir / "config.json") or {}).device)
    try:
        for record in run_queued(run_dir, world):
            if "val_accuracy" in record and world.is_main:
                print(_validation_line(record), file=sys.stderr)
    except NonFiniteLoss as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not world.is_main:
        return 0
    return _report_outcome(run_dir)


def cmd_runs(args) -> int:
    rows = runs.list_runs(args.runs_dir or runs.default_runs_dir())
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            val = f"{r['best_val_accuracy']:.3f}" if r["best_val_accuracy"] is not None else "-"
            print(f"{r['name']:40s} {r['algorithm']:10s} {r['dataset']:9s} {r['status']:11s} step {r['step']:>6} val {val}")
    return 0


# --------------------------------------------------------------------------- eval


def cmd_eval(args) -> int:
    from lab.evaluation import evaluate_run
    from lab.predict import resolve_model

    if args.protocol == "lake":
        return _eval_lake(args)

    result = evaluate_run(resolve_model(args.run), dataset=args.dataset, data_dir=args.data_dir, split=args.split,
                          n_way=args.n_way, k_shot=args.k_shot, n_query=args.n_query, episodes=args.episodes,
                          seed=args.seed, device=args.device, source=args.source, folder=args.folder)
    result["run"] = str(args.run)  # as given: "default" names the shipped model
    if args.calibration and "source" not in result:
        from lab.calibration import evaluate_calibration

        result["calibration"] = evaluate_calibration(
            args.run, dataset=args.dataset, data_dir=args.data_dir, split=args.split, n_way=result["n_way"],
            k_shot=result["k_shot"], n_query=args.n_query, episodes=args.episodes, seed=args.seed, device=args.device)
    dataset_name, split = result["dataset"], result["split"]
    if args.json:
        _print_json(result)
    else:
        print(f"{dataset_name}:{split} {result['n_way']}-way {result['k_shot']}-shot over {args.episodes} episodes: "
              f"{100 * result['accuracy']:.2f}% ± {100 * result['ci95']:.2f}% (95% CI)")
        for group, part in result.get("by_group", {}).items():
            print(f"  {group}: {100 * part['accuracy']:.2f}% over {part['episodes']} episodes")
        if "calibration" in result:
            c = result["calibration"]
            print(f"  ECE ({c['ece_bins']} bins) {c['ece_before']:.4f} -> {c['ece_after']:.4f} with T = "
                  f"{c['temperature']:.3f} ({c['temperature_from']['source']})")
    return 0


def _eval_lake(args) -> int:
    from lab.device import pick_device
    from lab.lake import check_qualifies, lake_error

    device = pick_device(args.device)
    config, model = runs.load_model(args.run, device=device)
    check_qualifies(config)
    result = lake_error(model, runs=args.lake_runs, seed=args.seed, data_dir=args.data_dir, device=device)
    result["run"] = str(args.run)
    if args.json:
        _print_json(result)
    else:
        print(f"Lake's protocol, {result['runs']} runs of 20-way within-alphabet one-shot: error "
              f"{100 * result['error']:.2f}% ± {100 * result['ci95']:.2f}% (95% CI)")
    return 0


# --------------------------------------------------------------------------- zoo


def cmd_zoo(args) -> int:
    from lab import zoo

    if args.action == "list":
        rows = zoo.status()
        if args.json:
            _print_json(rows)
        for r in rows if not args.json else []:
            shipped = f"step {r['step']:>6} of {r['recipe_steps']}" if r["shipped"] else "not shipped"
            floors = ", ".join(f"{k} {v}" for k, v in r["floors"].items())
            print(f"{r['name']:20s} {r['algorithm']:11s} {shipped:24s} floors: {floors}")
        return 0
    if args.action == "status":
        if not args.name:
            raise ValueError("zoo status needs a recipe name")
        zoo.recipe(args.name)
        _print_json(zoo.read_manifest(args.name) or {"name": args.name, "shipped": False})
        return 0
    if args.action == "train":
        if not args.name:
            raise ValueError("zoo train needs a recipe name")
        bar = None
        for record in zoo.train(args.name, args.minutes, args.runs_dir, args.device, args.steps):
            if "run_dir" in record:
                print(f"training {args.name} in {record['run_dir']} from step {record['from_step']}", file=sys.stderr)
                bar = _progress(zoo.recipe_config(args.name).steps, args.name)
                bar.update(record["from_step"])
            elif "manifest" in record:
                bar.close()
                m = record["manifest"]
                print(f"shipped zoo:{args.name}: step {m['step']}, meta-validation {100 * m['val_accuracy']:.2f}%, "
                      f"{m['bytes']:,} bytes", file=sys.stderr)
            else:
                bar.update(record["step"] - bar.n)
        return 0
    if args.action == "ship":
        if not args.name or not args.run:
            raise ValueError("zoo ship needs a recipe name and --run RUN_DIR")
        m = zoo.ship(args.name, args.run)
        print(f"shipped zoo:{args.name}: step {m['step']}, {m['bytes']:,} bytes", file=sys.stderr)
        return 0
    rows = zoo.verify([args.name] if args.name else None, args.episodes, args.device, args.record, args.lake_runs)
    if args.json:
        _print_json(rows)
    else:
        print(zoo.markdown_table(rows))
    failed = [f"{r['model']} {r['task']}" for r in rows if r["passed"] is False]
    if failed:
        print(f"under the floor or missing: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def cmd_compare(args) -> int:
    from lab.data import load_dataset
    from lab.device import pick_device
    from lab.evaluation import compare_models

    from lab.predict import resolve_model

    device = pick_device(args.device)
    config_a, model_a = runs.load_model(resolve_model(args.run_a), device=device)
    _, model_b = runs.load_model(resolve_model(args.run_b), device=device)
    if args.source:
        return _compare_on_source(args, config_a, model_a, model_b, device)
    dataset_name = args.dataset or config_a.dataset
    same = dataset_name == config_a.dataset
    dataset = load_dataset(dataset_name, args.data_dir or (config_a.data_dir if same else None),
                           config_a.split_scheme if same else None)
    split = args.split or ("test" if same else "all")
    result = compare_models(model_a, model_b, dataset.pool(split), args.n_way or config_a.n_way,
                            args.k_shot or config_a.k_shot, args.n_query, args.episodes, args.seed, device)
    result.update(run_a=str(args.run_a), run_b=str(args.run_b), dataset=dataset_name, split=split)
    if args.json:
        _print_json(result)
    else:
        print(f"A {100 * result['accuracy_a']:.2f}% vs B {100 * result['accuracy_b']:.2f}% on the same "
              f"{result['episodes']} episodes: A - B = {100 * result['difference']:+.2f}% "
              f"± {100 * result['difference_ci95']:.2f}% (paired 95% CI)")
    return 0


# --------------------------------------------------------------------------- predict / export


def cmd_predict(args) -> int:
    import numpy as np

    from lab.predict import TaughtSet, digit_support, load_digit_bank, load_predictor
    from lab.preprocess import read_image_file

    t0 = time.perf_counter()
    config, predictor = load_predictor(args.run, device="cpu")
    load_ms = 1000 * (time.perf_counter() - t0)
    if args.taught:
        support = TaughtSet.from_bytes(Path(args.taught).read_bytes()).support()
    else:
        support = digit_support(load_digit_bank(args.support or "auto", args.data_dir), args.k_shot, args.seed)
    prediction = predictor.predict_bytes(read_image_file(args.image), support)
    result = prediction.to_dict()
    result["timings_ms"]["load_model"] = round(load_ms, 3)
    result.update(model=str(args.run), algorithm=config.algorithm, support=support.source, n_way=support.n_way,
                  k_shot=int(np.bincount(support.labels).min()), image=str(args.image))
    if args.json:
        _print_json(result)
    else:
        t = result["timings_ms"]
        print(f"{result['prediction']} ({100 * result['confidence']:.1f}%) in {t['preprocess'] + t['predict']:.1f} ms "
              f"(+ adapt {t['adapt']:.1f} ms) against {support.n_way} classes from {support.source}")
        for line in ([f"not sure: {result['reason']}"] if result["unsure"] else []) + result["notes"]:
            print(f"  {line}")
    return 0


def cmd_calibrate(args) -> int:
    from lab.calibration import calibrate

    result = calibrate(args.run, episodes=args.episodes, n_way=args.n_way, k_shot=args.k_shot, n_query=args.n_query,
                       seed=args.seed, device=args.device, data_dir=args.data_dir, out=args.out)
    if args.json:
        _print_json(result)
    else:
        shape = result["fitted_on"]
        print(f"T = {result['temperature']:.3f} on {shape['episodes']} {shape['n_way']}-way {shape['k_shot']}-shot "
              f"{shape['dataset']}:val episodes: NLL {result['nll_before']:.4f} -> {result['nll_after']:.4f}, "
              f"ECE {result['ece_before']:.4f} -> {result['ece_after']:.4f}; written to {result['checkpoint']}")
    return 0


def cmd_export(args) -> int:
    result = runs.export_model(args.run, args.out, args.which)
    if args.json:
        _print_json(result)
    else:
        print(f"{result['out']}: {result['bytes']:,} bytes, step {result['step']} of {result['exported_from']}")
    return 0


def _compare_on_source(args, config_a, model_a, model_b, device) -> int:
    from lab.experts import compare_on_source

    result = compare_on_source(model_a, model_b, args.source, args.n_way or config_a.n_way,
                               args.k_shot or config_a.k_shot, args.n_query, args.episodes, args.seed, device,
                               args.data_dir, args.folder)
    result.update(run_a=str(args.run_a), run_b=str(args.run_b))
    if args.json:
        _print_json(result)
    else:
        print(f"A {100 * result['accuracy_a']:.2f}% vs B {100 * result['accuracy_b']:.2f}% on the same "
              f"{result['episodes']} {args.source} tasks: A - B = {100 * result['difference']:+.2f}% "
              f"± {100 * result['difference_ci95']:.2f}% (paired 95% CI)")
        for group, part in result["by_group"].items():
            print(f"  {group:24s} {part['episodes']:5d} tasks: A {100 * part['accuracy_a']:.2f}% "
                  f"B {100 * part['accuracy_b']:.2f}% A - B {100 * part['difference']:+.2f}%")
    return 0


# --------------------------------------------------------------------------- bench


def cmd_bench(args) -> int:
    from lab import bench

    result = bench.run(args.what, args)
    if args.json:
        _print_json(result)
    else:
        print(bench.format_result(args.what, result))
    return 0


# --------------------------------------------------------------------------- sweep


def cmd_sweep(args) -> int:
    """``sweep create|run|work|status|best|stop``: hyper-parameter sweeps (lab.sweeps)."""
    from lab import sweep_workers, sweeps

    where = {"runs_dir": args.runs_dir, "storage": args.storage}
    if args.sweep_command == "create":
        try:
            fixed, tries = json.loads(args.fixed or "{}"), [json.loads(t) for t in args.try_first or []]
        except ValueError as err:
            raise ValueError(f"--fixed and --try take JSON objects ({err})") from None
        if args.data_dir:
            fixed.setdefault("data_dir", args.data_dir)
        sweeps.create(args.name, args.algorithm, args.param or [], dataset=args.dataset, fixed=fixed,
                      n_trials=args.trials, minutes_per_trial=args.minutes_per_trial,
                      steps_per_trial=args.steps_per_trial, pruner=args.pruner, heartbeat_s=args.heartbeat,
                      try_first=tries, **where)
        print(sweeps.describe(sweeps.status(args.name, **where)))
    elif args.sweep_command == "run":
        pids = sweep_workers.launch(args.name, args.workers, **where)
        folder = sweeps.sweep_folder(args.runs_dir, args.name)
        print(f"started {len(pids)} worker(s) of {args.name}: processes {', '.join(map(str, pids))}; logs in {folder}")
    elif args.sweep_command == "work":
        ran = sweep_workers.work(args.name, verbose=True, **where)
        print(f"this worker ran {ran} trial(s) of {args.name}", file=sys.stderr)
    elif args.sweep_command == "stop":
        print(f"asked {sweep_workers.stop_workers(args.name, args.runs_dir)} worker(s) of {args.name} to stop")
    elif args.sweep_command == "status":
        if not args.name:
            names = sweeps.list_sweeps(**where)
            _print_json(names) if args.json else print("\n".join(names) or "no sweeps yet")
            return 0
        state = sweeps.status(args.name, **where)
        _print_json(state) if args.json else print(sweeps.describe(state))
    else:
        chosen = sweeps.best(args.name, **where)
        if args.test:
            chosen["test"] = sweeps.test_best(args.name, args.episodes, **where)
        if args.train:
            chosen["longer_run"] = str(sweeps.train_best(args.name, args.train, **where))
        if args.json:
            _print_json(chosen)
            return 0
        print(f"trial {chosen['trial']}: {chosen['value']:.1%} on the validation split (run {chosen['run']})",
              file=sys.stderr)
        if "test" in chosen:
            t = chosen["test"]
            print(f"test split: {t['accuracy']:.2%} ± {t['ci95']:.2%} (95% CI, {t['episodes']} episodes) for trial "
                  f"{t['trial']}" + (" (measured before: a sweep is tested once)" if t["already"] else ""),
                  file=sys.stderr)
        _print_json(chosen["config"])
        if "longer_run" in chosen:
            print(chosen["longer_run"])
    return 0


# --------------------------------------------------------------------------- parser


ALWAYS_GIVEN = ("algorithm", "dataset", "n_way", "k_shot", "seed", "device")
"""Settings a zoo recipe never fills in for a new run: they define the task it is asked for."""
NOT_OPTIONS = ("data_dir", "init_from")  # --data-dir is common to every command; init_from comes from the zoo


def config_options(q: argparse.ArgumentParser) -> None:
    """One option per :class:`~lab.config.TrainConfig` setting, from its declaration and the comment after it."""
    from lab.config import TrainConfig
    from lab.fields import declared, field_comments

    help_of, defaults = field_comments(TrainConfig), TrainConfig()
    for d in declared(TrainConfig):
        if d.name in NOT_OPTIONS:
            continue
        flag, text = f"--{d.name.replace('_', '-')}", help_of.get(d.name, "").replace("%", "%%")
        default = getattr(defaults, d.name) if d.name in ALWAYS_GIVEN else None
        if d.kind == "bool":
            q.add_argument(flag, action="store_true", default=None, help=text)
        elif d.kind == "json":
            q.add_argument(flag, type=_json_object, help=f"{text} (JSON, e.g. '{{\"inner_steps\": 5}}')")
        else:
            kind = {"int": int, "float": float, "str": str}[d.kind]
            q.add_argument(flag, type=kind, default=default, choices=list(d.choices) or None, help=text)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err.msg} at character {err.pos}): {text}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"inner_steps\": 5}}', not {text}")
    return value


def episode_options(q: argparse.ArgumentParser, source_help: str) -> None:
    """The options that choose the test episodes, shared by ``eval`` and ``compare``."""
    q.add_argument("--dataset", choices=DATASETS, help="default: the run's own (another dataset uses all its classes)")
    q.add_argument("--split", choices=("train", "val", "test", "all"))
    q.add_argument("--n-way", type=int)
    q.add_argument("--k-shot", type=int)
    q.add_argument("--n-query", type=int, default=15)
    q.add_argument("--episodes", type=int, default=1000)
    q.add_argument("--seed", type=int, default=0, help="seeds the test episodes: same seed, same episodes")
    q.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    q.add_argument("--source", choices=SOURCES, help=source_help)
    q.add_argument("--folder", help="a folder of images (one sub-folder per class) that joins the mixed source")


def _parser() -> argparse.ArgumentParser:
    from lab.algorithms import REGISTRY

    p = argparse.ArgumentParser(prog="python -m lab", description="Meta-Learning Lab: few-shot meta-learning engine.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(q, json_flag=True):
        q.add_argument("--data-dir", help="data root (default: $LAB_DATA_DIR or ~/.local/share/meta-lab/data)")
        if json_flag:
            q.add_argument("--json", action="store_true", help="print one JSON document")

    q = sub.add_parser("datasets", help="which datasets are present, with classes and images per split")
    common(q)
    q.set_defaults(func=cmd_datasets)

    q = sub.add_parser("train", help="meta-train an algorithm; prints the run folder last",
                       description="Settings left out come from the algorithm's zoo recipe, else the defaults.")
    common(q, json_flag=False)
    config_options(q)
    q.add_argument("--runs-dir", help="folder of runs (default: $LAB_RUNS_DIR or ./runs)")
    q.add_argument("--name", help="run name (letters, digits, '.', '_', '-')")
    q.add_argument("--base", help="clustered: the run folder whose model the cluster experts start from")
    q.add_argument("--k", type=int, default=3, help="clustered: number of clusters (experts)")
    q.add_argument("--source", default="mixed", choices=SOURCES, help="clustered: the task source")
    q.add_argument("--embedding", default="representation", choices=EMBEDDINGS, help="clustered: the task embedding")
    q.set_defaults(func=cmd_train_any)

    q = sub.add_parser("resume", help="continue a stopped or interrupted run from its last checkpoint")
    q.add_argument("run_dir")
    q.set_defaults(func=cmd_resume)

    q = sub.add_parser("run", help="train a run folder from its config.json (what the lab's pages start)")
    q.add_argument("run_dir")
    q.set_defaults(func=cmd_run)

    q = sub.add_parser("runs", help="list the runs of a runs folder")
    q.add_argument("--runs-dir")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_runs)

    q = sub.add_parser("eval", help="meta-test a run: accuracy with its 95%% confidence interval")
    common(q)
    q.add_argument("run", help="a run folder, a checkpoint file, zoo:NAME or default")
    episode_options(q, source_help="draw the test tasks from a task source (default for a clustered run: "
                                        "its own)")
    q.add_argument("--protocol", default="episodes", choices=("episodes", "lake"),
                   help="lake: Lake et al.'s 20 runs of 20-way within-alphabet one-shot (mean error rate)")
    q.add_argument("--lake-runs", type=int, default=20, help="lake: the number of runs")
    q.add_argument("--calibration", action="store_true", help="also the expected calibration error (15 bins) "
                   "before and after temperature scaling (T from the checkpoint, else fitted on validation episodes)")
    q.set_defaults(func=cmd_eval)

    q = sub.add_parser("zoo", help="the model zoo: recipes, training them, shipping and verifying their models")
    q.add_argument("action", choices=("list", "status", "train", "ship", "verify"))
    q.add_argument("name", nargs="?", help="a recipe (verify: all when absent)")
    q.add_argument("--minutes", type=float, help="train: stop this sitting after so many minutes (the schedule "
                   "follows the recipe's steps)")
    q.add_argument("--steps", type=int, help="train: the total steps to reach (default: the recipe's)")
    q.add_argument("--runs-dir", help="train: folder of runs (default: $LAB_RUNS_DIR or ./runs)")
    q.add_argument("--run", help="ship: the run folder whose best checkpoint joins the zoo")
    q.add_argument("--episodes", type=int, default=1000, help="verify: test episodes per task")
    q.add_argument("--lake-runs", type=int, default=20, help="verify: runs of Lake's protocol")
    q.add_argument("--record", action="store_true", help="verify: write the measurements into the manifests")
    q.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_zoo)

    q = sub.add_parser("compare", help="two runs on the same test episodes: paired difference with its 95%% CI")
    common(q)
    q.add_argument("run_a")
    q.add_argument("run_b")
    episode_options(q, source_help="draw the test tasks from a task source instead of a dataset")
    q.set_defaults(func=cmd_compare)

    q = sub.add_parser("predict", help="predict an image's class with a model adapted to a support set")
    common(q)
    q.add_argument("--run", default="default", help="a run folder, a checkpoint file, or 'default' (the shipped model)")
    q.add_argument("--image", required=True, help="a PNG, JPEG, BMP, GIF or WebP file (at most 5 MB)")
    q.add_argument("--support", choices=("mnist", "digits"), help="digit examples (default: mnist when present)")
    q.add_argument("--k-shot", type=int, default=5, help="examples per digit, 1 to 10")
    q.add_argument("--seed", type=int, default=0, help="seeds the choice of the digit examples")
    q.add_argument("--taught", help="a taught-set file (saved by the Draw page) instead of digits")
    q.set_defaults(func=cmd_predict)

    q = sub.add_parser("calibrate", help="fit a temperature and a doubt rule on the run's validation split and "
                       "write them into its checkpoint")
    common(q)
    q.add_argument("run", help="a run folder or a checkpoint file")
    q.add_argument("--episodes", type=int, default=200, help="validation episodes to fit on")
    q.add_argument("--n-way", type=int, default=10, help="classes per episode (the Draw page's 10 digits)")
    q.add_argument("--k-shot", type=int, default=5)
    q.add_argument("--n-query", type=int, default=15)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    q.add_argument("--out", help="write a calibrated copy here instead of changing the checkpoint")
    q.set_defaults(func=cmd_calibrate)

    q = sub.add_parser("export", help="write a run's checkpoint without the optimiser state (for assets/)")
    q.add_argument("run", help="a run folder or a checkpoint file")
    q.add_argument("--out", required=True)
    q.add_argument("--which", default="best", choices=("best", "last"))
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_export)

    q = sub.add_parser("cluster", help="embed tasks, K-means them, score the clusters against the true groups")
    common(q)
    q.add_argument("run", help="a run folder or a checkpoint file (its encoder embeds the tasks)")
    q.add_argument("--source", default="mixed", choices=SOURCES)
    q.add_argument("--tasks", type=int, default=500)
    q.add_argument("--k", type=int, help="number of clusters (default: suggested by the elbow and the silhouette)")
    q.add_argument("--max-k", type=int, default=20)
    q.add_argument("--embedding", default="representation", choices=EMBEDDINGS)
    q.add_argument("--n-way", type=int, default=5)
    q.add_argument("--k-shot", type=int, default=1)
    q.add_argument("--split", default="test", choices=("train", "val", "test"))
    q.add_argument("--seed", type=int, default=0, help="seeds the tasks and K-means")
    q.add_argument("--folder", help="a folder of images (one sub-folder per class) that joins the mixed source")
    q.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    q.set_defaults(func=cmd_cluster)

    q = sub.add_parser("bench", help="benchmarks: speed and memory")
    common(q)
    q.add_argument("what", choices=("data", "algorithms", "clusters", "distributed", "predict", "draw"))
    q.add_argument("--run", help="draw: the model, as predict names it (default: the shipped one)")
    q.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="algorithms: where to measure")
    q.add_argument("--algorithms", help="algorithms: a comma-separated subset (default: all)")
    q.add_argument("--meta-batch", type=int, help="algorithms: tasks per step (default: 32 on CUDA, 4 elsewhere)")
    q.add_argument("--reps", type=int, help="algorithms: timed steps per configuration (default: 5 on CUDA, 3 elsewhere)")
    q.add_argument("--threads", type=int, help="algorithms: CPU threads for both (default: PyTorch's, one per core)")
    q.add_argument("--steps", type=int, help="distributed: outer steps per measured training")
    q.set_defaults(func=cmd_bench)

    q = sub.add_parser("sweep", help="hyper-parameter sweeps with Optuna: each trial is a run")
    steps = q.add_subparsers(dest="sweep_command", required=True)
    parts = {c: steps.add_parser(c, help=h) for c, h in [
        ("create", "define a sweep: its search space, fixed settings, trials and budget"),
        ("run", "start background workers that run the sweep's trials"),
        ("work", "one worker, in the foreground (what 'run' starts)"),
        ("status", "trials, counts, the best trial and the workers (no NAME: list the sweeps)"),
        ("best", "the best trial's config as JSON; --train or --test it"),
        ("stop", "ask the sweep's workers to stop; their trials are re-queued")]}
    for c, s in parts.items():
        s.add_argument("name", nargs="?" if c == "status" else None, help="the sweep's name")
        s.add_argument("--runs-dir", help="folder of runs (default: $LAB_RUNS_DIR or ./runs)")
        s.add_argument("--storage", help="an SQLAlchemy URL of the study database "
                       "(default: $LAB_SWEEP_STORAGE or sqlite:///RUNS_DIR/sweeps.db)")
        s.set_defaults(func=cmd_sweep)
    s = parts["create"]
    s.add_argument("--data-dir", help="data root (default: $LAB_DATA_DIR or ~/.local/share/meta-lab/data)")
    s.add_argument("--algorithm", default="protonet", choices=sorted(REGISTRY))
    s.add_argument("--dataset", default="digits", choices=DATASETS)
    s.add_argument("--param", action="append", metavar="NAME[=LOW:HIGH[:log|:linear] | =A,B,C]",
                   help="a hyper-parameter or setting to search (repeat); NAME alone: around its default")
    s.add_argument("--fixed", help='run settings and hyper-parameters that stay fixed, as JSON, e.g. \'{"n_way": 5}\'')
    s.add_argument("--trials", type=int, default=12)
    s.add_argument("--minutes-per-trial", type=float)
    s.add_argument("--steps-per-trial", type=int)
    s.add_argument("--pruner", default="median", choices=("median", "halving", "none"))
    s.add_argument("--try", dest="try_first", action="append", metavar="JSON",
                   help='a point to try first, e.g. \'{"inner_lr": 0.1}\' (repeat)')
    s.add_argument("--heartbeat", type=int, default=10, help="seconds between a trial's heartbeats")
    parts["run"].add_argument("--workers", type=int, default=1)
    for c in ("status", "best"):
        parts[c].add_argument("--json", action="store_true")
    parts["best"].add_argument("--train", type=float, metavar="MINUTES", help="start a run of the best for MINUTES")
    parts["best"].add_argument("--test", action="store_true", help="meta-test the best on the test split, once")
    parts["best"].add_argument("--episodes", type=int, default=1000, help="test episodes")
    return p


def main(argv: list[str] | None = None) -> int:
    from lab.distributed import shutdown

    args = _parser().parse_args(argv)
    clean = False
    try:
        code = args.func(args)
        clean = True
        return code
    except (ValueError, DatasetUnavailable, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        shutdown(clean)


if __name__ == "__main__":  # pragma: no cover
    os._exit(main())
