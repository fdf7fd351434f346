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


def _drawing_png(digit, side: int = 280) -> bytes:
    """A 28x28 digit as the drawing pad returns it: ``side`` x ``side`` RGBA PNG, dark ink on transparent."""
    import io

    import numpy as np
    from PIL import Image

    ink = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BILINEAR))
    rgba = np.zeros((side, side, 4), dtype=np.uint8)
    rgba[..., 3] = ink
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG")
    return buf.getvalue()


EXPLAINED = 20  # drawings whose whole explanation (lab.explain) is timed


def bench_predict(args) -> dict:
    """Preprocessing + prediction of one drawing (p50/p95 over 200 drawings, the shipped model, 10-way
    5-shot digit support), the time to adapt to a new 10-way 5-shot support set, and the time of a
    whole explanation (neighbours, map, attribution, steps) of one drawing."""
    import numpy as np
    import torch

    from lab.data import load_dataset
    from lab.predict import MNIST_TRAIN_IMAGES, Predictor, digit_support, load_digit_bank, load_model

    _, model = load_model("default", device="cpu")
    bank = load_digit_bank("auto", args.data_dir)
    predictor = Predictor(model)
    adapt_ms = [predictor.adapt(digit_support(bank, 5, seed)) for seed in range(21)][1:]  # the first warms up

    # 200 held-out digits (MNIST's test images, or the digits the support never holds), drawn as the pad would.
    test = load_dataset(bank.source, args.data_dir if bank.source == "mnist" else None)
    start = MNIST_TRAIN_IMAGES if bank.source == "mnist" else 0
    images, labels = test.images[start:, 0].numpy(), test.labels[start:]
    pick = np.random.default_rng(0).choice(len(images), size=200, replace=False)
    drawings = [(_drawing_png(images[i]), int(labels[i])) for i in pick]
    support = digit_support(bank, 5, seed=0)
    for data, _ in drawings[:5]:
        predictor.predict_bytes(data, support)  # warm-up
    times, correct = [], 0
    for data, label in drawings:
        t0 = time.perf_counter()
        prediction = predictor.predict_bytes(data, support)
        times.append(1000 * (time.perf_counter() - t0))
        correct += prediction.top == str(label)
    explain_ms = []
    for data, _ in drawings[:EXPLAINED + 1]:  # the first warms up
        image = predictor.predict_bytes(data, support).image
        t0 = time.perf_counter()
        predictor.explain(image, support)
        explain_ms.append(1000 * (time.perf_counter() - t0))
    explain_ms = explain_ms[1:]
    return {
        "model": "default",
        "support": bank.source,
        "n_way": 10,
        "k_shot": 5,
        "drawings": len(drawings),
        "p50_ms": round(float(np.percentile(times, 50)), 2),
        "p95_ms": round(float(np.percentile(times, 95)), 2),
        "mean_ms": round(float(np.mean(times)), 2),
        "adapt_ms": round(float(np.median(adapt_ms)), 2),
        "adapt_p95_ms": round(float(np.percentile(adapt_ms, 95)), 2),
        "accuracy": round(correct / len(drawings), 4),
        "explain_p50_ms": round(float(np.percentile(explain_ms, 50)), 2),
        "explain_p95_ms": round(float(np.percentile(explain_ms, 95)), 2),
        "explained": len(explain_ms),
        "predict_threads": predictor.threads,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


DRAW_DIGITS = 300  # MNIST test digits behind the draw benchmark; each is drawn in every way of the corpus
DRAW_SUPPORT_SEEDS = (0, 1, 2, 3, 4)  # support sets the drawings are named against; seed 0 is the page's


def bench_draw(args) -> dict:
    """Top-1 accuracy on pad drawings of MNIST test digits (:mod:`lab.drawings`) per pen width, rotation and
    size, and on drawings varied at random in all of them (``mixed``), with the expected calibration error
    (15 bins) and how often a prediction is marked unsure.

    Each figure is the mean over 10-way 5-shot MNIST support sets of seeds :data:`DRAW_SUPPORT_SEEDS`;
    ``page_support`` is the one the page opens with (seed 0) alone.
    """
    import numpy as np

    from lab import drawings
    from lab.calibration import expected_calibration_error
    from lab.data import load_dataset
    from lab.predict import digit_support, load_digit_bank, load_predictor
    from lab.preprocess import preprocess_bytes

    source = getattr(args, "run", None) or "default"
    _, predictor = load_predictor(source)
    bank = load_digit_bank("mnist", args.data_dir)
    digits, labels = drawings.mnist_test_digits(load_dataset("mnist", args.data_dir), DRAW_DIGITS, seed=0)
    t0 = time.perf_counter()
    corpus = drawings.corpus(digits, labels, seed=0)
    draw_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    images = np.stack([preprocess_bytes(d.png) for d in corpus])
    preprocess_ms = 1000 * (time.perf_counter() - t0) / len(corpus)
    truth = np.array([d.label for d in corpus])
    runs_ = []  # per support set: probabilities (n, 10), unsure (n,)
    for seed in DRAW_SUPPORT_SEEDS:
        decisions = predictor.decide(images, digit_support(bank, 5, seed))
        runs_.append((np.stack([p for p, _ in decisions]), np.array([why is not None for _, why in decisions])))

    def scores(mask, probs, unsure) -> dict:
        right = probs[mask].argmax(1) == truth[mask]
        sure = ~unsure[mask]
        return {"accuracy": float(right.mean()), "unsure": float(unsure[mask].mean()),
                "accuracy_when_sure": float(right[sure].mean()) if sure.any() else float("nan"),
                "ece": expected_calibration_error(probs[mask], truth[mask])}

    def part(mask) -> dict:
        each = [scores(mask, probs, unsure) for probs, unsure in runs_]
        out = {k: round(float(np.mean([e[k] for e in each])), 4) for k in each[0]}
        out["page_support"] = {k: round(v, 4) for k, v in each[0].items()}
        out["drawings"] = int(mask.sum())
        return out

    group = np.array([d.group for d in corpus])
    width = np.array([d.width for d in corpus])
    angle = np.array([d.rotation for d in corpus])
    by_width = {str(w): part((group == "width") & (width == w)) for w in drawings.WIDTHS}
    page_widths = [str(w) for w in drawings.WIDTHS if 6 <= w <= 40]  # the page's slider

    def spread(key) -> dict:
        accs = [by_width[w][key] if key == "accuracy" else by_width[w]["page_support"]["accuracy"] for w in page_widths]
        return {"worst": min(accs), "best": max(accs), "gap": round(max(accs) - min(accs), 4)}

    return {
        "model": str(source),
        "temperature": predictor.temperature,
        "support": "mnist training digits, 10-way 5-shot",
        "support_seeds": list(DRAW_SUPPORT_SEEDS),
        "digits": DRAW_DIGITS,
        "drawings": len(corpus),
        "by_width": by_width,
        "by_rotation": {str(a): part((group == "rotation") & (angle == a)) for a in drawings.ROTATIONS},
        "by_size": {name: part(group == f"size:{name}") for name in drawings.SIZES},
        "mixed": part(group == "mixed"),
        "widths_6_to_40": spread("accuracy"),
        "widths_6_to_40_page_support": spread("page_support"),
        "draw_ms_per_drawing": round(1000 * draw_s / len(corpus), 2),
        "preprocess_ms_per_drawing": round(preprocess_ms, 2),
        "cpu_count": os.cpu_count(),
    }


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
