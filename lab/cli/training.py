"""Commands that train: ``datasets``, ``train``, ``resume``, ``run`` and ``runs``."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from lab import runs
from lab.cli.common import on_main, print_json, progress_bar
from lab.sitting import process_started


def cmd_datasets(args) -> int:
    from lab.data import dataset_status, load_dataset

    out = {}
    for name, status in dataset_status(args.data_dir).items():
        entry = dict(status)
        if status["available"]:
            entry.update(load_dataset(name, args.data_dir).summary())
        out[name] = entry
    if args.json:
        print_json(out)
    else:
        for name, entry in out.items():
            if not entry["available"]:
                print(f"{name:9s} not found ({entry['where']})")
                continue
            splits = ", ".join(f"{s} {v['classes']} classes / {v['images']} images" for s, v in entry["splits"].items())
            print(f"{name:9s} {entry['images']} images, {entry['labels']} labels; {entry['scheme']}: {splits}")
    return 0


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

    bar = progress_bar(config.steps, config.algorithm) if world.is_main else None
    if bar is not None and resume:
        bar.update(runs.read_status(run_dir).get("step", 0))
    for record in train(config, run_dir, resume=resume, launched_at=process_started()):
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
    """How the run ended, on stderr (cluster experts: with their base and cluster sizes), then its folder
    on stdout (last, for scripts)."""
    status = runs.read_status(run_dir)
    line = (f"{status['state']} at step {status.get('step')}; best meta-validation accuracy "
            f"{status.get('best_val_accuracy')}")
    if "cluster_sizes" in status:
        line += f" (base {status.get('base_val_accuracy')}); cluster sizes {status['cluster_sizes']}"
    print(line, file=sys.stderr)
    print(run_dir)
    return 0


def cmd_train(args) -> int:
    from lab.distributed import init_from_env
    from lab.training import check_config

    config = _config_from_args(args)
    world = init_from_env(config.device)
    check_config(config)
    run_dir = on_main(world, lambda: str(runs.create_run(args.runs_dir or runs.default_runs_dir(), config, args.name)))
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
    bar = progress_bar(config.steps, "clustered")
    for record in train_clustered(config, run_dir):
        bar.update(record["step"] - bar.n)
        if "loss" in record:
            bar.set_postfix(expert=record["expert"], loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.3f}")
    bar.close()
    return _report_outcome(run_dir)


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

    on_main(world, check)
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
    from lab.sitting import NonFiniteLoss

    run_dir = Path(args.run_dir)
    world = init_from_env(TrainConfig.from_dict(runs.read_json(run_dir / "config.json") or {}).device)
    try:
        for record in run_queued(run_dir, world, launched_at=process_started()):
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
        print_json(rows)
    else:
        for r in rows:
            val = f"{r['best_val_accuracy']:.3f}" if r["best_val_accuracy"] is not None else "-"
            print(f"{r['name']:40s} {r['algorithm']:10s} {r['dataset']:9s} {r['status']:11s} step {r['step']:>6} val {val}")
    return 0
