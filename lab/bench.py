"""Benchmarks behind ``python -m lab bench WHAT``: each returns a JSON-ready result.

Speed-ups are measured as ratios against a reference in the same process; nothing here is
asserted in the test-suite, since timings on shared machines are noisy.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time

from lab.bench_drawing import bench_draw, bench_predict


def _rss_mb() -> float:
    """Peak resident memory of this process in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_data(args) -> dict:
    """Cold (decode every PNG) and warm (from the cache) load time of full Omniglot."""
    from lab.data import load_dataset

    saved = os.environ.get("LAB_CACHE_DIR")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LAB_CACHE_DIR"] = tmp
        try:
            t0 = time.perf_counter()
            cold = load_dataset("omniglot", args.data_dir)
            t1 = time.perf_counter()
            warm = load_dataset("omniglot", args.data_dir)
            t2 = time.perf_counter()
        finally:
            if saved is None:
                os.environ.pop("LAB_CACHE_DIR")
            else:
                os.environ["LAB_CACHE_DIR"] = saved
    return {
        "dataset": "omniglot",
        "images": len(warm.images),
        "cold_s": round(t1 - t0, 3),
        "warm_s": round(t2 - t1, 3),
        "images_mb": round(warm.images.numel() * warm.images.element_size() / 2**20, 1),
        "peak_rss_mb": round(_rss_mb(), 1),
        "cpu_count": os.cpu_count(),
    }


def bench_distributed(args) -> list[dict]:
    """Outer steps/s and tasks/s of one meta-training with 1 and 2 CPU processes (Gloo), same total meta-batch."""
    import socket
    import subprocess
    import sys

    from lab import runs

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for procs in (1, 2):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            name = f"bench-{procs}"
            steps = getattr(args, "steps", None) or 40
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", f"--master_port={port}",
                   "-m", "lab", "train", "--dataset", "digits", "--algorithm", getattr(args, "algorithm", None) or "protonet",
                   "--device", "cpu", "--meta-batch", "8", "--n-query", "5", "--steps", str(steps),
                   "--val-every", str(steps), "--val-episodes", "4", "--log-every", str(steps // 2),
                   "--runs-dir", tmp, "--name", name]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(
                max(1, (os.cpu_count() or 1) // procs))})
            if proc.returncode != 0:
                raise RuntimeError(f"{procs}-process training failed: {proc.stderr.strip().splitlines()[-1]}")
            records = runs.read_jsonl(os.path.join(tmp, name, "metrics.jsonl"))
            tasks_per_s = records[-1]["tasks_per_s"]  # the second half, after warm-up
            out.append({"processes": procs, "backend": "gloo", "meta_batch": 8, "steps": steps,
                        "tasks_per_s": round(tasks_per_s, 2), "steps_per_s": round(tasks_per_s / 8, 3),
                        "cpu_count": os.cpu_count()})
    out[1]["speedup_vs_1"] = round(out[1]["tasks_per_s"] / out[0]["tasks_per_s"], 2)
    return out


ALGORITHM_CONFIGS = (  # (algorithm, n_way, k_shot, inner_steps); 5-way 1-shot, 15 queries per class
    ("maml", 5, 1, 5), ("fomaml", 5, 1, 5), ("anil", 5, 1, 5), ("metasgd", 5, 1, 5),
    ("learned-opt", 5, 1, 5), ("reptile", 5, 1, 5), ("metanet", 5, 1, 0),
)


def _peak_rss_during(fn) -> float:
    """Run ``fn`` and return how far the resident memory rose above its start, in MB (sampled every 2 ms)."""
    import threading

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    try:  # hand freed memory back first, so the baseline is what is really in use
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    base, peak, done = rss(), [0], threading.Event()

    def sample():
        while not done.wait(0.002):
            peak[0] = max(peak[0], rss())

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        fn()
    finally:
        done.set()
        watcher.join()
    return max(peak[0], rss()) - base


def bench_algorithms(args) -> list[dict]:
    """Each meta-learner's meta-training step (loss, backward, optimizer step) against the plain
    per-task loop of :mod:`lab.algorithms.reference`, on the same episodes, in this process.

    tasks/s is the best of ``--reps`` timed steps of each (interleaved, after one warm-up);
    peak memory is measured on a separate step (CUDA: peak allocated; CPU: peak resident
    growth). On a CPU both get the same ``--threads`` (default: PyTorch's, one per core): the
    reference as intra-op threads, the learners as they choose (tasks side by side in threads).
    """
    import numpy as np
    import torch

    from lab.algorithms import REGISTRY
    from lab.algorithms.reference import reference_backward
    from lab.data import DatasetUnavailable, load_dataset
    from lab.device import describe_device, pick_device
    from lab.episodes import sample_batch

    device = pick_device(getattr(args, "device", "auto"))
    cuda = device.type == "cuda"
    if not cuda and getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    meta_batch = getattr(args, "meta_batch", None) or (32 if cuda else 4)
    reps = getattr(args, "reps", None) or (5 if cuda else 3)
    wanted = getattr(args, "algorithms", None)
    try:
        pool = load_dataset("omniglot", args.data_dir).pool("train")
    except DatasetUnavailable:
        pool = load_dataset("digits").pool("train")
    rows = []
    for name, n_way, k_shot, inner_steps in ALGORITHM_CONFIGS:
        if wanted and name not in wanted.split(","):
            continue
        cls = REGISTRY[name]
        torch.manual_seed(0)
        model = cls(cls.make_hparams({"inner_steps": inner_steps} if inner_steps else {}), n_way).to(device)
        optimizer = model.configure_optimizer(1e-4)
        batches = [sample_batch(pool, n_way, k_shot, 15, meta_batch, np.random.default_rng(i), device)
                   for i in range(reps + 2)]

        def ours(batch):
            optimizer.zero_grad(set_to_none=True)
            model.outer_loss(batch).loss.backward()
            optimizer.step()

        def reference(batch):  # under the same autocast as the learner, if it uses one
            optimizer.zero_grad(set_to_none=True)
            with model.execution.autocast(device):
                reference_backward(model, batch)
            optimizer.step()

        def timed(fn, batch) -> float:
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn(batch)
            if cuda:
                torch.cuda.synchronize(device)
            return time.perf_counter() - start

        def peak_mb(fn, batch) -> float:
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
                fn(batch)
                torch.cuda.synchronize(device)
                return (torch.cuda.max_memory_allocated(device) - before) / 2**20
            return _peak_rss_during(lambda: fn(batch)) / 2**20

        ours(batches[0])
        reference(batches[0])
        best_ours = best_ref = float("inf")
        for batch in batches[1:-1]:
            best_ours = min(best_ours, timed(ours, batch))
            best_ref = min(best_ref, timed(reference, batch))
        strategy = model.strategy(device) if hasattr(model, "strategy") else "batched"
        rows.append({
            "algorithm": name, "n_way": n_way, "k_shot": k_shot, "n_query": 15, "inner_steps": inner_steps,
            "meta_batch": meta_batch, "device": describe_device(device)["name"], "strategy": strategy,
            "tasks_per_s": round(meta_batch / best_ours, 2),
            "reference_tasks_per_s": round(meta_batch / best_ref, 2),
            "ratio": round(best_ref / best_ours, 2),
            "peak_mem_mb": round(peak_mb(ours, batches[-1]), 1),
            "reference_peak_mem_mb": round(peak_mb(reference, batches[-1]), 1),
            "threads": torch.get_num_threads(),
        })
    return rows


def bench_clusters(args) -> dict:
    """Embedding 1000 mixed-source tasks (5-way 1-shot) and K-means (K = 3) of them, for each embedding.

    ``cpu_s`` is the processor time of both steps summed over threads: on a busy machine it shows what
    the wall-clock ``total_s`` would be with the cores to itself. scikit-learn is imported before the
    clock starts (once per process, not per clustering).
    """
    import sklearn.cluster  # noqa: F401
    import sklearn.decomposition  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import torch

    from lab.clustering import EMBEDDINGS, analyse, embed_tasks, load_source
    from lab.experts import untrained_model

    source = load_source("mixed", "test", args.data_dir)
    t0 = time.perf_counter()
    tasks = source.sample(1000, 5, 1, 0, seed=0)
    out = {"tasks": len(tasks), "groups": len(set(tasks.groups)), "sample_s": round(time.perf_counter() - t0, 3),
           "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    model = untrained_model()  # the timing does not depend on the weights
    for embedding in EMBEDDINGS:
        t0, c0 = time.perf_counter(), time.process_time()
        raw = embed_tasks(model, tasks, embedding)
        t1 = time.perf_counter()
        analyse(raw, tasks.groups, 3, embedding)
        t2, c2 = time.perf_counter(), time.process_time()
        out[embedding] = {"dims": raw.shape[1], "embed_s": round(t1 - t0, 3), "kmeans_s": round(t2 - t1, 3),
                          "total_s": round(t2 - t0, 3), "cpu_s": round(c2 - c0, 3)}
    out["load_average_1min"] = round(os.getloadavg()[0], 2)  # other work on the machine slows every figure
    return out


BENCHES = {"data": bench_data, "algorithms": bench_algorithms, "clusters": bench_clusters,
           "distributed": bench_distributed, "predict": bench_predict, "draw": bench_draw}


def run(what: str, args) -> dict | list:
    return BENCHES[what](args)


def format_result(what: str, result) -> str:
    if what == "data":
        return (f"Omniglot, {result['images']} images: cold {result['cold_s']} s, warm {result['warm_s']} s, "
                f"{result['images_mb']} MB of images, peak RSS {result['peak_rss_mb']} MB")
    if what == "distributed":
        return "\n".join(f"{r['processes']} process(es): {r['steps_per_s']} steps/s, {r['tasks_per_s']} tasks/s"
                         for r in result)
    if what == "predict":
        return (f"one drawing, preprocess + predict: p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms over "
                f"{result['drawings']} drawings ({100 * result['accuracy']:.1f}% right); adapting to a 10-way 5-shot "
                f"support set: {result['adapt_ms']} ms; explaining one: p50 {result['explain_p50_ms']} ms, "
                f"p95 {result['explain_p95_ms']} ms over {result['explained']} drawings")
    if what == "draw":
        lines = [f"pad drawings of {result['digits']} MNIST test digits, mean over {len(result['support_seeds'])} "
                 f"support sets (page's support in brackets):"]
        for title, key in (("pen width", "by_width"), ("rotation", "by_rotation"), ("size", "by_size")):
            lines.append(f"  {title:9s} " + "  ".join(
                f"{name}: {100 * r['accuracy']:.1f}% ({100 * r['page_support']['accuracy']:.1f}%)"
                for name, r in result[key].items()))
        m = result["mixed"]
        lines.append(f"  mixed     {100 * m['accuracy']:.1f}% right, ECE {m['ece']:.3f}, "
                     f"unsure {100 * m['unsure']:.1f}%, {100 * m['accuracy_when_sure']:.1f}% right when sure")
        return "\n".join(lines)
    if what == "algorithms":
        return "\n".join(
            f"{r['algorithm']:12s} {r['n_way']}w{r['k_shot']}s {r['inner_steps']} steps, meta-batch {r['meta_batch']} "
            f"({r['strategy']}): {r['tasks_per_s']} tasks/s vs reference {r['reference_tasks_per_s']} "
            f"= {r['ratio']}x; peak {r['peak_mem_mb']} MB vs {r['reference_peak_mem_mb']} MB on {r['device']}"
            for r in result)
    if what == "clusters":
        return "\n".join(f"{name}: embed {result[name]['embed_s']} s + K-means {result[name]['kmeans_s']} s "
                         f"= {result[name]['total_s']} s for {result['tasks']} tasks"
                         for name in ("representation", "gradient"))
    return str(result)
