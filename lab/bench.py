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


BENCHES = {"data": bench_data, "distributed": bench_distributed}


def run(what: str, args) -> dict | list:
    return BENCHES[what](args)


def format_result(what: str, result) -> str:
    if what == "data":
        return (f"Omniglot, {result['images']} images: cold {result['cold_s']} s, warm {result['warm_s']} s, "
                f"{result['images_mb']} MB of images, peak RSS {result['peak_rss_mb']} MB")
    if what == "distributed":
        return "\n".join(f"{r['processes']} process(es): {r['steps_per_s']} steps/s, {r['tasks_per_s']} tasks/s"
                         for r in result)
    return str(result)
