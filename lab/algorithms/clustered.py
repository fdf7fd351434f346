"""Cluster experts with a task router (in the manner of TSA-MAML, Zhou et al. 2021).

A global meta-learner (the *base*) embeds a new task's support set; the router maps the
embedding to its nearest K-means centroid, and that cluster's *expert* (a copy of the base
fine-tuned on the cluster's tasks) adapts to the task. Trained by
:func:`lab.experts.train_clustered` (``python -m lab train --algorithm clustered --base RUN``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lab.algorithms.base import REGISTRY, MetaLearner, Predictor, StepOutput, register
from lab.clustering import EMBEDDINGS, SOURCES, embed_support
from lab.episodes import Episode
from lab.fields import check_fields, choice, positive


@dataclass(frozen=True)
class ClusteredHparams:
    base: str = ""  # the run folder of the global model the experts are fine-tuned from
    k: int = positive(3)  # number of clusters, hence of experts
    source: str = choice("mixed", SOURCES)  # the task source whose training tasks are clustered (lab.clustering.SOURCES)
    embedding: str = choice("representation", EMBEDDINGS)  # how a task becomes a vector (lab.clustering.EMBEDDINGS)
    tasks: int = 1000  # training tasks embedded, clustered, and shared out among the experts
    folder: str | None = None  # a folder of images that joins the mixed source
    base_algorithm: str = ""  # the base's algorithm, read from its run
    base_hparams: dict = field(default_factory=dict)  # the base's hyper-parameters, read from its run

    def __post_init__(self):
        if not self.base:
            raise ValueError("base: cluster experts start from a trained run; give its folder (--base RUN_DIR)")
        check_fields(self)
        if not isinstance(self.tasks, int) or self.tasks < self.k:
            raise ValueError(f"tasks: must be a whole number of at least k = {self.k}, not {self.tasks!r}")
        if self.base_algorithm not in REGISTRY or self.base_algorithm == ClusteredLearner.name:
            raise ValueError(f"base_algorithm: {self.base_algorithm!r} is not a base meta-learner")


class TaskRouter(nn.Module):
    """Nearest-centroid routing of raw task embeddings.

    Buffers: ``mean`` ``(D,)`` and ``components`` ``(p, D)`` map a raw embedding into K-means'
    space (``components`` is empty for the identity); ``centroids`` is ``(k, p)``. Their sizes
    come from the fit, so loading a state dict takes the sizes it finds.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(0))
        self.register_buffer("components", torch.zeros(0, 0))
        self.register_buffer("centroids", torch.zeros(0, 0))

    def set(self, mean, components, centroids) -> None:
        as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
        self.mean = as_tensor(mean)
        self.components = as_tensor(components) if components is not None else torch.zeros(0, 0)
        self.centroids = as_tensor(centroids)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("mean", "components", "centroids"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def features(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw embeddings ``(T, D)`` -> K-means space ``(T, p)``, in float64 on the CPU as K-means had them."""
        x = raw.detach().cpu().double() - self.mean.cpu().double()
        return x @ self.components.cpu().double().T if self.components.numel() else x

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw embeddings ``(T, D)`` -> index of the nearest centroid ``(T,)``."""
        if not self.centroids.numel():
            raise ValueError("the router has no centroids: it was never fitted")
        return torch.cdist(self.features(raw), self.centroids.cpu().double()).argmin(-1)


@register
class ClusteredLearner(MetaLearner):
    name = "clustered"
    summary = "Cluster experts: K-means the tasks, fine-tune one expert per cluster, route new tasks."
    Hparams = ClusteredHparams

    def __init__(self, hparams: ClusteredHparams, n_way: int):
        super().__init__(hparams, n_way)
        base_cls = REGISTRY[hparams.base_algorithm]
        base_hparams = base_cls.make_hparams(hparams.base_hparams)
        self.base = base_cls(base_hparams, n_way)
        self.experts = nn.ModuleList(base_cls(base_hparams, n_way) for _ in range(hparams.k))
        self.router = TaskRouter()

    def route(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> torch.Tensor:
        """The expert of each task: support sets ``(T, n, 1, H, W)`` (or one ``(n, 1, H, W)``) -> ``(T,)``."""
        single = support_x.dim() == 4
        if single:
            support_x, support_y = support_x.unsqueeze(0), support_y.unsqueeze(0)
        raw = embed_support(self.base, support_x, support_y, n_way, self.hparams.embedding)
        return self.router(raw)

    def outer_loss(self, batch: Episode) -> StepOutput:
        """Each task's loss under the expert it is routed to, averaged over the batch."""
        which = self.route(batch.support_x, batch.support_y, batch.n_way)
        loss, accuracy = 0.0, 0.0
        for c in which.unique().tolist():
            idx = (which == c).nonzero().flatten()
            out = self.experts[c].outer_loss(Episode(*(t[idx] for t in batch)))
            share = len(idx) / len(which)
            loss, accuracy = loss + share * out.loss, accuracy + share * out.accuracy
        return StepOutput(loss, accuracy)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> Predictor:
        expert = int(self.route(support_x, support_y, n_way)[0])
        return self.experts[expert].adapt(support_x, support_y, n_way)

    def internals(self) -> dict:
        return {"k": self.hparams.k, "source": self.hparams.source, "embedding": self.hparams.embedding,
                "base": self.hparams.base, "base_algorithm": self.hparams.base_algorithm}

    def configure_optimizer(self, meta_lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.experts.parameters(), lr=meta_lr)
