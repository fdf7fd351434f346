"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

Each class is represented by the mean of its support embeddings (its prototype); a query is
classified by a softmax over negative squared Euclidean distances to the prototypes. On a new task the
distances can be measured in a metric fitted after meta-training (:mod:`lab.metric`), between
embeddings averaged over test-time views of each image (:mod:`lab.views`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lab.algorithms.base import MetaLearner, Predictor, StepOutput, input_grad, register
from lab.episodes import Episode
from lab.fields import check_fields, number
from lab.models import Conv4, proto_logits, prototypes  # noqa: F401  (the metric of this module)
from lab.views import with_views


@dataclass(frozen=True)
class ProtoHparams:
    distance: Literal["euclidean", "cosine"] = "euclidean"  # squared Euclidean (the paper's choice) or cosine
    towers: int = number(1, low=1, high=8)  # Conv4 encoders side by side, their squared distances averaged: an ensemble in one network

    def __post_init__(self):
        check_fields(self)


@register
class ProtoNet(MetaLearner):
    name = "protonet"
    summary = "Prototypical Networks: classify by distance to class-mean embeddings (metric learning)."
    Hparams = ProtoHparams

    def __init__(self, hparams: ProtoHparams, n_way: int):
        super().__init__(hparams, n_way)
        self.encoder = Conv4()
        self.towers = getattr(hparams, "towers", 1)  # a subclass's own hyper-parameters may not have any
        self.more_towers = nn.ModuleList(Conv4() for _ in range(self.towers - 1))
        # The metric's whitening (d, d) of lab.metric, set from a checkpoint; not a weight, so not in the state dict.
        self.register_buffer("whitening", None, persistent=False)
        self.views: tuple[str, ...] = ()  # test-time views of lab.views, set from a checkpoint

    @property
    def embedding_dim(self) -> int:
        return self.encoder.hidden * self.towers  # a 28x28 image leaves the fourth block as 1x1

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(..., n, 1, H, W)`` -> embeddings ``(..., n, d)``: with several towers, theirs joined and
        scaled by 1/sqrt(towers), so that a squared distance is the mean of the towers' squared distances."""
        lead, flat = x.shape[:-3], x.reshape(-1, *x.shape[-3:])
        if not len(self.more_towers):
            return self.encoder(flat).reshape(*lead, -1)
        z = torch.cat([self.encoder(flat), *(tower(flat) for tower in self.more_towers)], -1)
        return (z / math.sqrt(self.towers)).reshape(*lead, -1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(..., n, 1, H, W)`` -> the vectors a new task's distances are measured between
        ``(..., n, d)``: the embeddings (averaged with their test-time views' when the model has some),
        whitened when the model has a fitted metric."""
        return self.whitened(self.embed(with_views(x, self.views)).mean(0) if self.views else self.embed(x))

    def whitened(self, z: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(..., d)`` in the model's metric: whitened when it has a fitted one."""
        return z if self.whitening is None else z @ self.whitening

    def outer_loss(self, batch: Episode) -> StepOutput:
        n_way = batch.n_way
        protos = prototypes(self.embed(batch.support_x), batch.support_y, n_way)
        logits = proto_logits(self.embed(batch.query_x), protos, self.hparams.distance)
        loss = F.cross_entropy(logits.reshape(-1, n_way), batch.query_y.reshape(-1))
        accuracy = (logits.argmax(-1) == batch.query_y).float().mean()
        return StepOutput(loss, accuracy)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> Predictor:
        with torch.no_grad():
            protos = prototypes(self.features(support_x), support_y, n_way)

        def predict(x: torch.Tensor) -> torch.Tensor:
            with input_grad(x):
                return proto_logits(self.features(x), protos, self.hparams.distance)

        return predict
