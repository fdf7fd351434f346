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


BENCHES = {"data": bench_data}


def run(what: str, args) -> dict | list:
    return BENCHES[what](args)


def format_result(what: str, result) -> str:
    if what == "data":
        return (f"Omniglot, {result['images']} images: cold {result['cold_s']} s, warm {result['warm_s']} s, "
                f"{result['images_mb']} MB of images, peak RSS {result['peak_rss_mb']} MB")
    return str(result)
