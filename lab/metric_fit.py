"""Fitting the metric of :mod:`lab.metric` for a Prototypical Network on a run's own classes: the
covariance of its meta-training classes' embeddings, and the shrinkage under which its
meta-validation episodes are answered best; then the test-time views of :mod:`lab.views` under which
they are answered best in that metric."""

from __future__ import annotations

import numpy as np
import torch

from lab.adaptation import FIT_SEED, FIT_SHAPES, shape_key
from lab.episodes import can_supply, sample_episode
from lab.metric import shrunk_whitening
from lab.models import proto_logits, prototypes
from lab.views import VIEW_SETS, with_views

SHRINKAGES = (None, 100.0, 30.0, 10.0, 3.0, 1.0, 0.3)  # None: plain distance; then ever further from it
METRIC_EPISODES = 300  # per task shape; each is scored under every shrinkage
COVARIANCE_IMAGES = 5  # per meta-training class
VIEW_EPISODES = 150  # per task shape; each is scored under every set of views, at one embedding an image per view


def embedding_covariance(model, pool, per_class: int = COVARIANCE_IMAGES, device="cpu",
                         batch: int = 1024) -> torch.Tensor:
    """Covariance ``(d, d)`` of ``model.embed`` over the first ``per_class`` images of each class of ``pool``."""
    if len(pool) == 0:
        raise ValueError(f"{pool.name} has no class to estimate the embedding's covariance on")
    images = torch.cat([pool.class_images(i, np.arange(min(per_class, len(pool.members[i]))))
                        for i in range(len(pool))])
    with torch.no_grad():
        z = torch.cat([model.embed(images[i:i + batch].to(device).float().div_(255.0)).double().cpu()
                       for i in range(0, len(images), batch)])
    if len(z) < 2:
        raise ValueError(f"{pool.name} holds {len(z)} image: a covariance needs two or more")
    return torch.cov(z.T)


def fit_metric(model, train_pool, val_pool, shapes=FIT_SHAPES, shrinkages=SHRINKAGES, n_query: int = 15,
               episodes: int = METRIC_EPISODES, seed: int = FIT_SEED, device="cpu") -> dict:
    """Fit the shrinkage of ``model``'s metric (a :class:`lab.algorithms.protonet.ProtoNet`): the one of
    ``shrinkages`` whose mean accuracy over ``episodes`` meta-validation episodes (``val_pool``) of every shape
    in ``shapes`` is highest, the covariance coming from ``train_pool``. Every shrinkage is scored on the same
    episodes; ties go to the plainer metric. Shapes with more ways than the pool has classes, or more shots
    than its classes have images, are left out. Sets the metric on the model and returns
    ``{"metric": {"whitening", "shrinkage"} or None (plain distance), "fit": {how it was chosen}}``."""
    shapes = [(w, s) for w, s in shapes if can_supply(val_pool, w, s, n_query)]
    if not shapes:
        raise ValueError(f"{val_pool.name} is too small for any task shape to fit a metric on")
    covariance = embedding_covariance(model, train_pool, device=device)
    candidates = [None if lam is None else shrunk_whitening(covariance, lam).to(device) for lam in shrinkages]
    hits = {shape_key(w, s): np.zeros(len(shrinkages)) for w, s in shapes}
    model.whitening = None
    with torch.no_grad():
        for n_way, k_shot in shapes:
            rng = np.random.default_rng(seed)
            for _ in range(episodes):
                ep = sample_episode(val_pool, n_way, k_shot, n_query, rng).to(device)
                support, query = model.embed(ep.support_x), model.embed(ep.query_x)
                for i, w in enumerate(candidates):
                    s, q = (support, query) if w is None else (support @ w, query @ w)
                    logits = proto_logits(q, prototypes(s, ep.support_y, n_way), model.hparams.distance)
                    hits[shape_key(n_way, k_shot)][i] += (logits.argmax(-1) == ep.query_y).float().mean().item()
    accuracy = {key: h / episodes for key, h in hits.items()}
    score = np.mean(list(accuracy.values()), axis=0)
    best = max(range(len(shrinkages)), key=lambda i: (round(float(score[i]), 6), -i))
    model.whitening = candidates[best]
    names = [str(lam) if lam is not None else "plain" for lam in shrinkages]
    fit = {"shrinkage": shrinkages[best], "score": dict(zip(names, map(float, score))),
           "accuracy": {key: dict(zip(names, map(float, acc))) for key, acc in accuracy.items()},
           "episodes": episodes, "seed": seed, "covariance_from": f"{train_pool.name}, {COVARIANCE_IMAGES} images a class"}
    metric = None if candidates[best] is None else {"whitening": candidates[best].cpu(), "shrinkage": shrinkages[best]}
    return {"metric": metric, "fit": fit}


def fit_views(model, val_pool, shapes=FIT_SHAPES, sets=VIEW_SETS, n_query: int = 15, episodes: int = VIEW_EPISODES,
              seed: int = FIT_SEED, device="cpu") -> dict:
    """Fit the test-time views of ``model`` (a :class:`lab.algorithms.protonet.ProtoNet`, its metric already
    set): the set of ``sets`` (name -> view names) whose mean accuracy over ``episodes`` meta-validation
    episodes of every shape in ``shapes`` is highest, support and queries viewed alike. Every set is scored on
    the same episodes; ties go to the set named first. Sets the views on the model and returns
    ``{"views": their names, "fit": {how they were chosen}}``."""
    shapes = [(w, s) for w, s in shapes if can_supply(val_pool, w, s, n_query)]
    if not shapes:
        raise ValueError(f"{val_pool.name} is too small for any task shape to fit test-time views on")
    names = list(sets)
    every = tuple(dict.fromkeys(v for members in sets.values() for v in members))
    picks = [[0] + [1 + every.index(v) for v in sets[name]] for name in names]
    hits = {shape_key(w, s): np.zeros(len(names)) for w, s in shapes}
    model.views = ()
    with torch.no_grad():
        def embedded(x):  # (1 + views, n, d): each image's embedding, then each view's
            return model.embed(with_views(x, every))

        for n_way, k_shot in shapes:
            rng = np.random.default_rng(seed)
            for _ in range(episodes):
                ep = sample_episode(val_pool, n_way, k_shot, n_query, rng).to(device)
                support, query = embedded(ep.support_x), embedded(ep.query_x)
                for i, pick in enumerate(picks):
                    s, q = model.whitened(support[pick].mean(0)), model.whitened(query[pick].mean(0))
                    logits = proto_logits(q, prototypes(s, ep.support_y, n_way), model.hparams.distance)
                    hits[shape_key(n_way, k_shot)][i] += (logits.argmax(-1) == ep.query_y).float().mean().item()
    accuracy = {key: h / episodes for key, h in hits.items()}
    score = np.mean(list(accuracy.values()), axis=0)
    best = max(range(len(names)), key=lambda i: (round(float(score[i]), 6), -i))
    model.views = tuple(sets[names[best]])
    fit = {"set": names[best], "score": dict(zip(names, map(float, score))),
           "accuracy": {key: dict(zip(names, map(float, acc))) for key, acc in accuracy.items()},
           "episodes": episodes, "seed": seed}
    return {"views": model.views, "fit": fit}


def fit_metric_and_views(model, train_pool, val_pool, n_query: int = 15, episodes: int | None = None,
                         device="cpu") -> dict:
    """:func:`fit_metric` (``episodes`` per shape, default :data:`METRIC_EPISODES`), then :func:`fit_views`
    in that metric (as many episodes, at most :data:`VIEW_EPISODES`): ``{"metric", "metric_fit", "views", "views_fit"}``."""
    episodes = episodes or METRIC_EPISODES
    metric = fit_metric(model, train_pool, val_pool, n_query=n_query, episodes=episodes, device=device)
    views = fit_views(model, val_pool, n_query=n_query, episodes=min(episodes, VIEW_EPISODES), device=device)
    return {"metric": metric["metric"], "metric_fit": metric["fit"], "views": list(views["views"]),
            "views_fit": views["fit"]}
