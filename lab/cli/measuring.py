"""Commands that measure and use a model: ``eval``, ``compare``, ``cluster``, ``predict``, ``calibrate``, ``export``, ``ensemble``."""

from __future__ import annotations

import time
from pathlib import Path

from lab import runs
from lab.cli.common import describe_metric, describe_views, print_json


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
        print_json(result)
    else:
        print(f"{dataset_name}:{split} {result['n_way']}-way {result['k_shot']}-shot over {args.episodes} episodes: "
              f"{100 * result['accuracy']:.2f}% ± {100 * result['ci95']:.2f}% (95% CI)")
        for group, part in result.get("by_group", {}).items():
            print(f"  {group}: {100 * part['accuracy']:.2f}% over {part['episodes']} episodes")
        if "calibration" in result:
            c = result["calibration"]
            interval = f" ± {c['ece_after_ci95']:.4f}" if c.get("ece_after_ci95") is not None else ""
            print(f"  ECE ({c['ece_bins']} bins) {c['ece_before']:.4f} -> {c['ece_after']:.4f}{interval} with T = "
                  f"{c['temperature']:.3f} ({c['temperature_from']['source']})")
    return 0


def _eval_lake(args) -> int:
    from lab.device import pick_device
    from lab.lake import check_qualifies, lake_error

    device = pick_device(args.device)
    config, model = runs.load_model(args.run, device=device)
    check_qualifies(config)
    result = lake_error(model, runs=args.lake_runs, seed=args.seed, data_dir=args.data_dir, device=device,
                        strokes=config.strokes)
    result["run"] = str(args.run)
    if args.json:
        print_json(result)
    else:
        print(f"Lake's protocol, {result['runs']} runs of 20-way within-alphabet one-shot: error "
              f"{100 * result['error']:.2f}% ± {100 * result['ci95']:.2f}% (95% CI)")
    return 0


def cmd_compare(args) -> int:
    from lab.data import load_dataset
    from lab.device import pick_device
    from lab.evaluation import compare_models

    from lab.predict import resolve_model

    device = pick_device(args.device)
    config_a, model_a = runs.load_model(resolve_model(args.run_a), device=device)
    config_b, model_b = runs.load_model(resolve_model(args.run_b), device=device)
    if args.source:
        return _compare_on_source(args, config_a, config_b, model_a, model_b, device)
    dataset_name = args.dataset or config_a.dataset
    same = dataset_name == config_a.dataset
    datasets = {strokes: load_dataset(dataset_name, args.data_dir or (config_a.data_dir if same else None),
                                      config_a.split_scheme if same else None, strokes)
                for strokes in {config_a.strokes, config_b.strokes}}
    split = args.split or ("test" if same else "all")
    result = compare_models(model_a, model_b, datasets[config_a.strokes].pool(split), args.n_way or config_a.n_way,
                            args.k_shot or config_a.k_shot, args.n_query, args.episodes, args.seed, device,
                            pool_b=datasets[config_b.strokes].pool(split))
    result.update(run_a=str(args.run_a), run_b=str(args.run_b), dataset=dataset_name, split=split)
    if args.json:
        print_json(result)
    else:
        print(f"A {100 * result['accuracy_a']:.2f}% vs B {100 * result['accuracy_b']:.2f}% on the same "
              f"{result['episodes']} episodes: A - B = {100 * result['difference']:+.2f}% "
              f"± {100 * result['difference_ci95']:.2f}% (paired 95% CI)")
    return 0


def _compare_on_source(args, config_a, config_b, model_a, model_b, device) -> int:
    from lab.experts import compare_on_source

    result = compare_on_source(model_a, model_b, args.source, args.n_way or config_a.n_way,
                               args.k_shot or config_a.k_shot, args.n_query, args.episodes, args.seed, device,
                               args.data_dir, args.folder, strokes=config_a.strokes, strokes_b=config_b.strokes)
    result.update(run_a=str(args.run_a), run_b=str(args.run_b))
    if args.json:
        print_json(result)
    else:
        print(f"A {100 * result['accuracy_a']:.2f}% vs B {100 * result['accuracy_b']:.2f}% on the same "
              f"{result['episodes']} {args.source} tasks: A - B = {100 * result['difference']:+.2f}% "
              f"± {100 * result['difference_ci95']:.2f}% (paired 95% CI)")
        for group, part in result["by_group"].items():
            print(f"  {group:24s} {part['episodes']:5d} tasks: A {100 * part['accuracy_a']:.2f}% "
                  f"B {100 * part['accuracy_b']:.2f}% A - B {100 * part['difference']:+.2f}%")
    return 0


def cmd_cluster(args) -> int:
    from lab.clustering import cluster_report
    from lab.device import pick_device

    config, model = runs.load_model(args.run, device=pick_device(args.device))
    out = cluster_report(model, args.source, args.tasks, args.k, args.embedding, args.n_way, args.k_shot, args.split,
                         args.seed, args.data_dir, args.folder, args.max_k, config.strokes)
    out["run"] = str(args.run)
    if args.json:
        print_json(out)
    else:
        if "scan" in out:
            print(f"suggested K {out['suggested_k']} (the lowest BIC of Gaussian mixtures; the inertia's elbow is at "
                  f"K {out['elbow_k']})")
        print(f"{out['source']}: {out['tasks']} tasks, {out['embedding']} embedding, K = {out['k']}: "
              f"ARI {out['ari']:.3f}, NMI {out['nmi']:.3f}, silhouette {out['silhouette']:.3f}, "
              f"inertia {out['inertia']:.1f}")
        for row in out["clusters"]:
            print(f"  cluster {row['cluster']:2d}: {row['size']:4d} tasks, {100 * row['purity']:5.1f}% "
                  f"{row['dominant_group']}")
    return 0


def cmd_predict(args) -> int:
    import numpy as np

    from lab.predict import digit_support, load_digit_bank, load_predictor
    from lab.preprocess import read_image_file
    from lab.taught import TaughtSet

    t0 = time.perf_counter()
    config, predictor = load_predictor(args.run, device="cpu")
    load_ms = 1000 * (time.perf_counter() - t0)
    if args.taught:
        support = TaughtSet.from_bytes(Path(args.taught).read_bytes()).support()
    else:
        support = digit_support(load_digit_bank(args.support or "auto", args.data_dir), args.k_shot, args.seed)
    prediction = predictor.predict_bytes(read_image_file(args.image), support)
    result = prediction.to_dict()
    if args.explain:
        t1 = time.perf_counter()
        result["explanation"] = predictor.explain(prediction.image, support)
        result["timings_ms"]["explain"] = round(1000 * (time.perf_counter() - t1), 3)
    result["timings_ms"]["load_model"] = round(load_ms, 3)
    result.update(model=str(args.run), algorithm=config.algorithm, support=support.source, n_way=support.n_way,
                  k_shot=int(np.bincount(support.labels).min()), image=str(args.image))
    if args.json:
        print_json(result)
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
        print_json(result)
    else:
        shape = result["fitted_on"]
        print(f"T = {result['temperature']:.3f} on {shape['episodes']} {shape['n_way']}-way {shape['k_shot']}-shot "
              f"{shape['dataset']}:val episodes: NLL {result['nll_before']:.4f} -> {result['nll_after']:.4f}, "
              f"ECE {result['ece_before']:.4f} -> {result['ece_after']:.4f}; written to {result['checkpoint']}")
        if result.get("rate_scales"):
            print("adaptation rate, times meta-training's: "
                  + ", ".join(f"{k} x{v:g}" for k, v in result["rate_scales"].items()))
        if "metric_fit" in result:
            print(describe_metric(result["metric_fit"]))
        if "views_fit" in result:
            print(describe_views(result["views_fit"]))
    return 0



def cmd_export(args) -> int:
    result = runs.export_model(args.run, args.out, args.which)
    if args.json:
        print_json(result)
    else:
        print(f"{result['out']}: {result['bytes']:,} bytes, step {result['step']} of {result['exported_from']}")
    return 0


def cmd_ensemble(args) -> int:
    from lab.ensemble import join_protonets

    result = join_protonets(args.members, args.out)
    if args.json:
        print_json(result)
    else:
        print(f"{result['out']}: {result['towers']} towers from {len(result['members'])} models, {result['bytes']:,} bytes; "
              f"fit its metric and temperature with: python -m lab calibrate {result['out']}")
    return 0
