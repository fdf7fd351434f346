"""Calibration: probabilities that mean what they say, and a model that knows when it is unsure.

- :func:`expected_calibration_error`: how far confidence is from accuracy, over equal-width bins
  (Naeini et al. 2015; Guo et al. 2017 use 15 bins).
- :func:`fit_temperature`: temperature scaling (Guo et al. 2017): one number ``T`` by which every logit
  is divided, the one that minimises the negative log-likelihood of meta-validation queries. It never
  changes which class wins, only how sure the model says it is.
- :func:`fit_doubt`: when to say "not sure", chosen on the same meta-validation queries: a floor on the
  calibrated top probability, and a floor on the top logit, which for a metric learner such as
  Prototypical Networks is minus the squared distance to the nearest class.
- :func:`calibrate`: both for a run, on its own validation split (after the rate at which a gradient
  learner adapts to each task shape, :mod:`lab.adaptation`), written into its checkpoint with
  :func:`write_calibration` so :class:`lab.predict.Predictor` uses them.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lab import runs
from lab.adaptation import adapts_by_rate, check_rate_scales
from lab.augment import augment_episode, step_generator
from lab.data import load_dataset
from lab.device import pick_device
from lab.episodes import check_request, episode_stream
from lab.evaluation import mean_ci95, meta_test_pool
from lab.metric import check_metric
from lab.metric_fit import fit_metric_and_views
from lab.rate_fit import fit_rate_scales
from lab.views import check_views

ECE_BINS = 15
FALSE_ALARMS = 0.02  # the share of meta-validation queries the doubt rule may call unsure on distance alone
CALIBRATION_WAY, CALIBRATION_SHOT = 10, 5  # the Draw & Predict page's digit task
CALIBRATION_EPISODES = 200


def expected_calibration_error(probs, labels, bins: int = ECE_BINS) -> float:
    """Expected calibration error of ``probs`` ``(n, n_way)`` for true ``labels`` ``(n,)``.

    Queries are binned by their top probability into ``bins`` equal-width bins of [0, 1]; the error is
    the mean over queries of |accuracy - confidence| of their bin. 0 for a perfectly calibrated model.
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if probs.ndim != 2 or len(probs) != len(labels) or len(probs) == 0:
        raise ValueError(f"expected probabilities (n, n_way) and n labels, not {probs.shape} and {labels.shape}")
    confidence = probs.max(1)
    right = probs.argmax(1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)  # bin i holds (i/bins, (i+1)/bins]
    which[confidence <= 0] = 0
    total = 0.0
    for b in np.unique(which):
        inside = which == b
        total += inside.sum() * abs(right[inside].mean() - confidence[inside].mean())
    return float(total / len(probs))


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` ``(n,)`` under ``logits`` ``(n, n_way)`` / ``temperature``."""
    return float(F.cross_entropy(logits.double() / temperature, labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, lo: float = 1e-3, hi: float = 1e3) -> float:
    """The temperature in [``lo``, ``hi``] that minimises :func:`nll` of ``logits`` ``(n, n_way)``.

    The NLL is convex in 1/T, so a golden-section search on log T finds the minimum; it ends when the
    bracket is narrower than 0.1% of T.
    """
    logits, labels = logits.detach().double().cpu(), labels.detach().cpu()
    if len(logits) == 0:
        raise ValueError("fitting a temperature needs at least one query")
    a, b = math.log(lo), math.log(hi)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(logits, labels, math.exp(c)), nll(logits, labels, math.exp(d))
    while b - a > 1e-3:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(logits, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(logits, labels, math.exp(d))
    return float(math.exp((a + b) / 2))


# --------------------------------------------------------------------------- doubt


@dataclass(frozen=True)
class Doubt:
    """When a prediction is "not sure": its top logit (divided by T) is under ``min_logit``, far from every
    class (for a Prototypical Network, minus the squared distance to the nearest prototype), or its
    calibrated top probability is under ``min_probability``, between classes.

    ``min_logit`` None: only the probability decides.
    """

    min_probability: float
    min_logit: float | None = None

    def reason(self, probs: np.ndarray, logits: np.ndarray, class_names=None) -> str | None:
        """Why one prediction is unsure, in a line, or None when it is not: ``probs`` and ``logits``
        ``(n_way,)``, the logits divided by the temperature; ``class_names`` to name the likeliest two."""
        if self.min_logit is not None and float(np.max(logits)) < self.min_logit:
            return "it is far from every class it was shown: maybe it is none of them"
        top = float(np.max(probs))
        if top < self.min_probability:
            if class_names is not None and len(probs) > 1:
                first, second = np.argsort(probs)[::-1][:2]
                return (f"it is only {top:.0%} sure: it could be {class_names[first]} "
                        f"or {class_names[second]}")
            return f"it is only {top:.0%} sure"
        return None


def _rising_fit(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence nearest to ``values`` in weighted least squares (pool adjacent violators)."""
    means, sizes, counts = [], [], []
    for v, w in zip(values, weights):
        means.append(float(v))
        sizes.append(float(w))
        counts.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            m, s, c = means.pop(), sizes.pop(), counts.pop()
            means[-1] = (means[-1] * sizes[-1] + m * s) / (sizes[-1] + s)
            sizes[-1] += s
            counts[-1] += c
    return np.repeat(means, counts)


def fit_doubt(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
              false_alarms: float = FALSE_ALARMS) -> Doubt:
    """The doubt rule for query ``logits`` ``(n, n_way)`` of validation queries with true ``labels`` ``(n,)``.

    ``min_logit``: the top logit (divided by ``temperature``) that only ``false_alarms`` of these queries
    fall under. ``min_probability``: where these queries stop being wrong more often than right. How
    often a query is right is fitted as a rising function of its calibrated top probability (isotonic
    regression); the floor lies halfway between the last probability at which that is under 50% and
    the next one seen; 0 when it never is.
    """
    scaled = logits.detach().double().cpu() / temperature
    probs = torch.softmax(scaled, -1).numpy()
    right = (probs.argmax(1) == labels.cpu().numpy()).astype(float)
    levels, where = np.unique(probs.max(1), return_inverse=True)
    counts = np.bincount(where, minlength=len(levels)).astype(float)
    accuracy = _rising_fit(np.bincount(where, right, minlength=len(levels)) / counts, counts)
    wrong_more = np.flatnonzero(accuracy < 0.5)
    if len(wrong_more) == 0:
        min_probability = 0.0
    elif wrong_more[-1] + 1 < len(levels):
        min_probability = float(levels[wrong_more[-1]] + levels[wrong_more[-1] + 1]) / 2
    else:
        min_probability = 1.0
    min_logit = float(np.quantile(scaled.max(-1).values.numpy(), false_alarms))
    return Doubt(round(min_probability, 4), round(min_logit, 4))


# --------------------------------------------------------------------------- episodes and runs


def episode_logits(model, episodes, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The query logits of ``model.adapt`` on each episode, stacked: ``(n, n_way)`` and labels ``(n,)``."""
    model.eval()
    all_logits, all_labels = [], []
    for ep in episodes:
        ep = ep.to(device)
        predict = model.adapt(ep.support_x, ep.support_y, ep.n_way)
        with torch.no_grad():
            all_logits.append(predict(ep.query_x).float().cpu())
        all_labels.append(ep.query_y.cpu())
    if not all_logits:
        raise ValueError("no episodes to compute logits on")
    return torch.cat(all_logits), torch.cat(all_labels)


def checkpoint_file(source: str | os.PathLike) -> Path:
    """The checkpoint file a model name stands for: a run folder's ``best.pt`` (else ``last.pt``), a file,
    or a name :func:`lab.runs.resolve_source` knows (``default``, ``zoo:NAME``); one that is missing raises."""
    path = runs.checkpoint_path(source)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}")
    return path


def fit_on_validation(model, config, n_way: int = CALIBRATION_WAY, k_shot: int = CALIBRATION_SHOT,
                      n_query: int = 15, episodes: int | None = None, seed: int = 0, device="cpu",
                      data_dir=None, adaptation: bool = False, rate_episodes: int | None = None,
                      metric_episodes: int | None = None) -> dict:
    """Temperature and doubt rule fitted on ``episodes`` (default :data:`CALIBRATION_EPISODES`)
    meta-validation episodes of the run's own dataset.

    ``n_way`` is lowered to the number of validation classes when there are fewer. Returns the
    temperature, the doubt rule, the NLL and ECE before and after, and the episodes' shape. A run that
    trains on augmented episodes (``config.augment``) is calibrated on validation episodes augmented the
    same way (seeded), the variety of drawing it was trained to meet. With ``adaptation``, how the
    model meets a new task is fitted first on the same split, and the temperature is that of the model
    so adapting: a learner that adapts by gradient steps has its rate per task shape fitted
    (:func:`lab.rate_fit.fit_rate_scales`, returned as ``"rate_scales"`` and ``"rate_fit"``), a
    Prototypical Network its metric and then its test-time views (:func:`lab.metric_fit.fit_metric` and
    :func:`lab.metric_fit.fit_views`, ``"metric"``, ``"metric_fit"``, ``"views"`` and ``"views_fit"``);
    either is set on ``model``.
    """
    episodes = episodes or CALIBRATION_EPISODES
    dataset = load_dataset(config.dataset, data_dir or config.data_dir, config.split_scheme, config.strokes)
    pool = dataset.pool("val")
    n_way = min(n_way, len(pool))
    check_request(pool, n_way, k_shot, n_query)
    fitted_rates = fit_rate_scales(model, pool, n_query=n_query, episodes=rate_episodes, device=device) \
        if adaptation and adapts_by_rate(model) else None
    metric_part = fit_metric_and_views(model, dataset.pool("train"), pool, n_query, metric_episodes, device) \
        if adaptation and hasattr(model, "whitening") else {}
    stream = episode_stream(pool, n_way, k_shot, n_query, episodes, seed)
    if config.augment:  # a model trained for drawings that vary is calibrated on drawings that vary so
        stream = [augment_episode(ep, step_generator(seed, i)) for i, ep in enumerate(stream)]
    logits, labels = episode_logits(model, stream, device)
    temperature = fit_temperature(logits, labels)
    doubt = fit_doubt(logits, labels, temperature)
    rate_part = {} if fitted_rates is None else {
        "rate_scales": fitted_rates["rate_scales"], "rate_fit": {k: v for k, v in fitted_rates.items() if k != "rate_scales"}}
    return rate_part | metric_part | {
        "temperature": temperature,
        "doubt": asdict(doubt),
        "nll_before": nll(logits, labels), "nll_after": nll(logits, labels, temperature),
        "ece_before": expected_calibration_error(torch.softmax(logits, -1).numpy(), labels.numpy()),
        "ece_after": expected_calibration_error(torch.softmax(logits / temperature, -1).numpy(), labels.numpy()),
        "fitted_on": {"dataset": config.dataset, "split": "val", "n_way": n_way, "k_shot": k_shot,
                      "n_query": n_query, "episodes": episodes, "seed": seed, "augmented": bool(config.augment)},
    }


def write_calibration(path: str | os.PathLike, calibration: dict, out: str | os.PathLike | None = None) -> Path:
    """Add ``"temperature"`` (and ``"doubt"``, ``"calibration"``: how they were fitted) to the checkpoint at
    ``path``, keeping its other keys; written atomically to ``out`` (default: ``path`` itself)."""
    checkpoint = runs.load_checkpoint(path)
    checkpoint["temperature"] = float(calibration["temperature"])
    if calibration.get("doubt"):
        checkpoint["doubt"] = {k: (None if v is None else float(v)) for k, v in calibration["doubt"].items()}
    if calibration.get("rate_scales"):
        checkpoint["rate_scales"] = check_rate_scales(calibration["rate_scales"], "the calibration")
    if "metric" in calibration:  # None: plain distance was fitted, so an older metric goes
        checkpoint.pop("metric", None)
        if (metric := calibration["metric"]) is not None:
            checkpoint["metric"] = check_metric(metric, len(metric.get("whitening", ())), "the calibration")
    if "views" in calibration:  # none fitted: an older set goes
        checkpoint.pop("views", None)
        if views := check_views(calibration["views"], "the calibration"):
            checkpoint["views"] = list(views)
    checkpoint["calibration"] = {k: v for k, v in calibration.items()
                                 if k not in ("temperature", "doubt", "rate_scales", "metric", "views")}
    out = Path(out or path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, out)
    return out


def read_calibration(path: str | os.PathLike) -> tuple[float, Doubt | None]:
    """The temperature (1.0 when the checkpoint has none) and doubt rule (None) stored in a checkpoint."""
    checkpoint = runs.load_checkpoint(path)
    temperature = float(checkpoint.get("temperature", 1.0))
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"the checkpoint {path} holds an invalid temperature {temperature!r}")
    doubt = checkpoint.get("doubt")
    return temperature, (Doubt(float(doubt["min_probability"]), doubt.get("min_logit")) if doubt else None)


def calibrate(source, *, episodes: int = CALIBRATION_EPISODES, n_way: int = CALIBRATION_WAY,
              k_shot: int = CALIBRATION_SHOT, n_query: int = 15, seed: int = 0, device: str = "auto",
              data_dir=None, out=None, rate_episodes: int | None = None,
              metric_episodes: int | None = None) -> dict:
    """Fit the temperature and doubt rule of a run (or checkpoint) on its validation split and write them
    into its checkpoint (or into a copy at ``out``); a learner that adapts by gradient steps first has its
    adaptation rates fitted (``rate_episodes`` per shape and factor), a Prototypical Network its metric
    (``metric_episodes`` per shape) and test-time views. Returns what :func:`fit_on_validation` does, with
    the file written (and the metric by its shrinkage alone)."""
    path = checkpoint_file(source)
    torch_device = pick_device(device)
    config, model = runs.load_model(path, device=torch_device)
    result = fit_on_validation(model, config, n_way, k_shot, n_query, episodes, seed, torch_device, data_dir,
                               adaptation=True, rate_episodes=rate_episodes, metric_episodes=metric_episodes)
    result["checkpoint"] = str(write_calibration(path, result, out))
    if result.get("metric"):
        result["metric"] = {"shrinkage": result["metric"]["shrinkage"]}
    return result


def ece_interval(probs, labels, per_episode: int, resamples: int = 200, seed: int = 0) -> float:
    """Half-width of the 95% interval of :func:`expected_calibration_error`, by resampling whole episodes
    (``per_episode`` consecutive queries each) with replacement: the 2.5th to 97.5th percentile, halved."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    n = len(probs) // per_episode
    if n < 2 or n * per_episode != len(probs):
        raise ValueError(f"{len(probs)} queries are not whole episodes of {per_episode}")
    rng = np.random.default_rng(seed)
    starts = np.arange(n) * per_episode
    values = []
    for _ in range(resamples):
        rows = (rng.choice(starts, n)[:, None] + np.arange(per_episode)).ravel()
        values.append(expected_calibration_error(probs[rows], labels[rows]))
    low, high = np.percentile(values, [2.5, 97.5])
    return float((high - low) / 2)


def evaluate_calibration(source, *, dataset: str | None = None, data_dir=None, split: str | None = None,
                         n_way: int | None = None, k_shot: int | None = None, n_query: int = 15,
                         episodes: int = 1000, seed: int = 0, device: str = "auto",
                         val_episodes: int = CALIBRATION_EPISODES) -> dict:
    """ECE (15 bins, with the 95% interval of the calibrated one), NLL and accuracy on the test episodes
    :func:`lab.evaluation.evaluate_run` draws with the same arguments, before and after calibration. The
    temperature is the checkpoint's when it holds one, else one fitted on ``val_episodes`` episodes of the
    run's validation split of the same shape."""
    path = checkpoint_file(source)
    torch_device = pick_device(device)
    config, model = runs.load_model(path, device=torch_device)
    n_way, k_shot = n_way or config.n_way, k_shot or config.k_shot
    _, _, pool = meta_test_pool(config, dataset, data_dir, split)
    check_request(pool, n_way, k_shot, n_query)
    logits, labels = episode_logits(model, episode_stream(pool, n_way, k_shot, n_query, episodes, seed), torch_device)
    stored, _ = read_calibration(path)
    if "temperature" in runs.load_checkpoint(path):
        temperature, fitted = stored, {"source": "checkpoint"}
    else:
        own_data = data_dir if dataset in (None, config.dataset) else None  # data_dir names the test dataset's
        fit = fit_on_validation(model, config, n_way, k_shot, n_query, val_episodes, seed, torch_device, own_data)
        temperature, fitted = fit["temperature"], {"source": "validation", **fit["fitted_on"]}
    after = torch.softmax(logits / temperature, -1).numpy()
    accuracy, accuracy_ci95 = mean_ci95((logits.argmax(-1) == labels).double().reshape(episodes, -1).mean(1).numpy())
    return {
        "temperature": temperature,
        "temperature_from": fitted,
        "accuracy": accuracy,
        "accuracy_ci95": accuracy_ci95,
        "ece_before": expected_calibration_error(torch.softmax(logits, -1).numpy(), labels.numpy()),
        "ece_after": expected_calibration_error(after, labels.numpy()),
        "ece_after_ci95": ece_interval(after, labels.numpy(), n_way * n_query) if episodes > 1 else None,
        "nll_before": nll(logits, labels),
        "nll_after": nll(logits, labels, temperature),
        "ece_bins": ECE_BINS,
    }
