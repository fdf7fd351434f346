"""Benchmarks behind ``python -m lab bench WHAT``: each returns a JSON-ready result.

Speed-ups are measured as ratios against a reference in the same process; nothing here is
asserted in the test-suite, since timings on shared machines are noisy.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time


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


def bench_clusters(args) -> dict:
    """Embedding 1000 mixed-source tasks (5-way 1-shot) and K-means (K = 3) of them, for each embedding.

    ``cpu_s`` is the processor time of both steps summed over threads: on a busy machine it shows what
    the wall-clock ``total_s`` would be with the cores to itself.
    """
    import torch

    from lab.clustering import EMBEDDINGS, analyse, embed_tasks, load_source, untrained_model

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


BENCHES = {"data": bench_data, "clusters": bench_clusters}


def run(what: str, args) -> dict | list:
    return BENCHES[what](args)


def format_result(what: str, result) -> str:
    if what == "data":
        return (f"Omniglot, {result['images']} images: cold {result['cold_s']} s, warm {result['warm_s']} s, "
                f"{result['images_mb']} MB of images, peak RSS {result['peak_rss_mb']} MB")
    if what == "clusters":
        return "\n".join(f"{name}: embed {result[name]['embed_s']} s + K-means {result[name]['kmeans_s']} s "
                         f"= {result[name]['total_s']} s for {result['tasks']} tasks"
                         for name in ("representation", "gradient"))
    return str(result)
