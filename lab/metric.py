"""The metric in which a Prototypical Network measures distances on a new task.

Meta-training makes squared Euclidean distance between embeddings tell classes apart, on the
meta-training classes. Other images (MNIST digits for a model meta-trained on Omniglot) vary along the
directions in which the meta-training images already varied a lot: those directions say less about
which class an image is, and plain distance still weighs them fully. The Mahalanobis distance under
the covariance ``S`` of meta-training embeddings, shrunk toward a multiple of the identity, weighs
them down:

    d(x, p) = (x - p)^T W^2 (x - p),   W = sqrt(s (1 + lam)) (S + lam s I)^(-1/2),   s = trace(S) / dim

``lam`` (the shrinkage) sets how far from plain distance the metric goes: at large ``lam`` ``W``
tends to the identity, and for an isotropic ``S`` it is the identity at any ``lam``, so distances
keep the scale of the embedding's. The shrunk covariance is the estimator of Simple CNAPS
(Bateni et al. 2020) and of whitened nearest-centroid classifiers; here ``S`` comes from the
meta-training classes alone and ``lam`` is fitted on meta-validation episodes
(:func:`lab.metric_fit.fit_metric`), never on a test split.

A checkpoint keeps the metric under ``"metric"`` (``{"whitening": W, "shrinkage": lam}``);
:func:`lab.runs.load_model` hands ``W`` to the model. A model without one measures plain distance.
"""

from __future__ import annotations

import math

import torch


def shrunk_whitening(covariance: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """``W`` of the module's formula for a covariance ``(d, d)`` and a shrinkage > 0: symmetric ``(d, d)``."""
    if not (math.isfinite(shrinkage) and shrinkage > 0):
        raise ValueError(f"the shrinkage must be a positive number, not {shrinkage!r}")
    cov = covariance.double()
    cov = (cov + cov.T) / 2
    scale = float(cov.diagonal().mean().clamp_min(1e-12))
    values, vectors = torch.linalg.eigh(cov + shrinkage * scale * torch.eye(len(cov), dtype=cov.dtype))
    root = vectors @ torch.diag(values.clamp_min(1e-12).rsqrt()) @ vectors.T
    return (math.sqrt(scale * (1 + shrinkage)) * root).float()


def check_metric(value, dim: int, where: str = "the checkpoint") -> dict:
    """``value`` as ``{"whitening": float (dim, dim) tensor, "shrinkage": float}``, or a one-line ValueError."""
    if not isinstance(value, dict) or "whitening" not in value:
        raise ValueError(f"{where} holds a metric that is not a table with a whitening matrix")
    w = value["whitening"]
    if not isinstance(w, torch.Tensor) or w.shape != (dim, dim) or not w.is_floating_point():
        shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"{where} holds a whitening matrix of shape {shape}; this model's embedding needs ({dim}, {dim})")
    if not torch.isfinite(w).all():
        raise ValueError(f"{where} holds a whitening matrix with values that are not finite")
    shrinkage = value.get("shrinkage")
    if isinstance(shrinkage, bool) or not isinstance(shrinkage, (int, float)) or not shrinkage > 0:
        raise ValueError(f"{where} holds the shrinkage {shrinkage!r}: it must be a positive number")
    return {"whitening": w.float(), "shrinkage": float(shrinkage)}
