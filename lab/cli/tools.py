"""Commands of the lab's tools: ``zoo``, ``bench`` and ``sweep``."""

from __future__ import annotations

import json
import sys

from lab.cli.common import describe_metric, describe_views, print_json, progress_bar


def cmd_zoo(args) -> int:
    from lab import zoo, zoo_join, zoo_verify

    if args.action == "list":
        rows = zoo.status()
        if args.json:
            print_json(rows)
        for r in rows if not args.json else []:
            shipped = f"step {r['step']:>6} of {r['recipe_steps']}" if r["shipped"] else "not shipped"
            floors = ", ".join(f"{k} {v}" for k, v in r["floors"].items())
            print(f"{r['name']:20s} {r['algorithm']:11s} {shipped:24s} floors: {floors}")
        return 0
    if args.action == "status":
        if not args.name:
            raise ValueError("zoo status needs a recipe name")
        zoo.recipe(args.name)
        print_json(zoo.read_manifest(args.name) or {"name": args.name, "shipped": False})
        return 0
    if args.action == "train":
        if not args.name:
            raise ValueError("zoo train needs a recipe name")
        if zoo.recipe(args.name).join:
            m = zoo_join.train_joined(args.name, device=args.device)
            members = ", ".join(f"{x['name']} {100 * x['val_accuracy']:.2f}%" for x in m["members"])
            print(f"shipped zoo:{args.name}: meta-validation {100 * m['val_accuracy']:.2f}% (joined: {members}), "
                  f"{m['bytes']:,} bytes", file=sys.stderr)
            return 0
        bar = None
        for record in zoo.train(args.name, args.minutes, args.runs_dir, args.device, args.steps):
            if "run_dir" in record:
                print(f"training {args.name} in {record['run_dir']} from step {record['from_step']}", file=sys.stderr)
                bar = progress_bar(zoo.recipe_config(args.name).steps, args.name)
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
        print(f"shipped zoo:{args.name}: step {m['step']}, T = {m['calibration']['temperature']:.3f}, "
              f"{m['bytes']:,} bytes", file=sys.stderr)
        return 0
    if args.action == "calibrate":
        if not args.name:
            raise ValueError("zoo calibrate needs a recipe name")
        m = zoo.recalibrate(zoo.recipe(args.name).name)
        c = m["calibration"]
        rates = ", ".join(f"{k} x{v:g}" for k, v in (c.get("rate_scales") or {}).items())
        print(f"zoo:{args.name}: T = {c['temperature']:.3f}" + (f"; adaptation rate {rates}" if rates else "")
              + "; its measurements await zoo verify --record", file=sys.stderr)
        if "metric_fit" in c:
            print(describe_metric(c["metric_fit"]), file=sys.stderr)
        if "views_fit" in c:
            print(describe_views(c["views_fit"]), file=sys.stderr)
        return 0
    if args.action == "table":  # what the last verify --record measured, without measuring again
        rows = zoo_verify.recorded_rows([args.name] if args.name else None)
        print_json(rows) if args.json else print(zoo_verify.markdown_table(rows))
        return 0
    if args.action == "curve":
        names = [zoo.recipe(args.name).name] if args.name else [r["name"] for r in zoo.status() if r["shipped"]]
        curves = {name: zoo.learning_curve(name) for name in names}
        print_json(curves) if args.json else print(format_curves(curves))
        return 0
    rows = zoo_verify.verify([args.name] if args.name else None, args.episodes, args.device, args.record, args.lake_runs)
    if args.json:
        print_json(rows)
    else:
        print(zoo_verify.markdown_table(rows))
    failed = [f"{r['model']} {r['task']}" for r in rows if r["passed"] is False]
    if failed:
        print(f"under the floor or missing: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def format_curves(curves: dict[str, list[dict]]) -> str:
    """One block per recipe: step, meta-validation accuracy and training hours at each validation."""
    blocks = []
    for name, points in curves.items():
        lines = [f"{name}:" if points else f"{name}: not shipped"]
        for p in points:
            accuracy = "?" if p["val_accuracy"] is None else f"{100 * p['val_accuracy']:.2f}%"
            hours = "?" if p["hours"] is None else f"{p['hours']:.2f}"
            lines.append(f"  step {p['step']:>6}  {accuracy:>7}  {hours:>6} h  {p['device'] or ''}")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def cmd_bench(args) -> int:
    from lab import bench

    result = bench.run(args.what, args)
    if args.json:
        print_json(result)
    else:
        print(bench.format_result(args.what, result))
    return 0


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
            print_json(names) if args.json else print("\n".join(names) or "no sweeps yet")
            return 0
        state = sweeps.status(args.name, **where)
        print_json(state) if args.json else print(sweeps.describe(state))
    else:
        chosen = sweeps.best(args.name, **where)
        if args.test:
            chosen["test"] = sweeps.test_best(args.name, args.episodes, **where)
        if args.train:
            chosen["longer_run"] = str(sweeps.train_best(args.name, args.train, **where))
        if args.json:
            print_json(chosen)
            return 0
        print(f"trial {chosen['trial']}: {chosen['value']:.1%} on the validation split (run {chosen['run']})",
              file=sys.stderr)
        if "test" in chosen:
            t = chosen["test"]
            print(f"test split: {t['accuracy']:.2%} ± {t['ci95']:.2%} (95% CI, {t['episodes']} episodes) for trial "
                  f"{t['trial']}" + (" (measured before: a sweep is tested once)" if t["already"] else ""),
                  file=sys.stderr)
        print_json(chosen["config"])
        if "longer_run" in chosen:
            print(chosen["longer_run"])
    return 0
