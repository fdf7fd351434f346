"""The benchmarks of the drawing pad: ``bench predict`` (the time to read one drawing, to adapt to a
support set, and to explain a prediction) and ``bench draw`` (accuracy on pad drawings of MNIST digits)."""

from __future__ import annotations

import os
import time


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
