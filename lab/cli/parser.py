"""The command line itself: its options and ``main``."""

from __future__ import annotations

import argparse
import json
import sys

from lab.cli.measuring import (cmd_calibrate, cmd_cluster, cmd_compare, cmd_ensemble, cmd_eval, cmd_export,
                               cmd_predict)
from lab.cli.tools import cmd_bench, cmd_sweep, cmd_zoo
from lab.cli.training import cmd_datasets, cmd_resume, cmd_run, cmd_runs, cmd_train_any
from lab.clustering import EMBEDDINGS, SOURCES
from lab.data import DATASETS, DatasetUnavailable
from lab.device import DEVICE_CHOICES


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
    q.add_argument("action", choices=("list", "status", "train", "ship", "calibrate", "verify", "table", "curve"))
    q.add_argument("name", nargs="?", help="a recipe (verify, table, curve: all when absent; table prints the rows "
                   "verify --record last measured; curve, the meta-validation accuracy against steps and hours; calibrate fits a shipped model's adaptation rates or metric, and temperature, again)")
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
    q.add_argument("--explain", action="store_true", help="also why: the nearest support examples, an attribution "
                   "map over the input, and (gradient-based learners) the inner steps one by one")
    q.set_defaults(func=cmd_predict)

    q = sub.add_parser("calibrate", help="fit a temperature and a doubt rule (and, for a learner that adapts by "
                       "gradient steps, its adaptation rate per task shape; for a Prototypical Network, its metric) "
                       "on the run's validation split and write them into its checkpoint")
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

    q = sub.add_parser("ensemble", help="join Prototypical Networks trained apart into one whose squared distances "
                       "average theirs (calibrate it afterwards)")
    q.add_argument("members", nargs="+", help="two or more run folders, checkpoint files or zoo:NAME models")
    q.add_argument("--out", required=True, help="the checkpoint file to write")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_ensemble)

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
