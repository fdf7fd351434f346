"""The standard Conv4 backbone of few-shot learning, callable functionally.

Four blocks of 3x3 convolution with 64 filters, normalisation, ReLU and 2x2 max-pooling
(Vinyals et al. 2016; Snell et al. 2017; Finn et al. 2017). A 28x28 image becomes a
64-dimensional embedding.

Normalisation is per example (GroupNorm), so an image's embedding never depends on the
other images in its batch: predictions on one drawn digit equal predictions in a batch, and
the network has no running statistics, so ``torch.func.functional_call`` and ``vmap`` over
tasks need no special care.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def max_pool_2x2(x: torch.Tensor, gather: bool = False) -> torch.Tensor:
    """2x2 max-pooling of ``(n, C, H, W)``, the same values as ``F.max_pool2d(x, 2)``.

    Outside autograd on a CPU it pools a channels-last copy, PyTorch's faster CPU kernel.
    Where gradients flow, the default kernel is used, unless ``gather``: then each window's
    maximum is located that faster way, outside autograd, and picked out of ``x`` with
    ``gather``, whose backward (a scatter) and double backward (a gather) are PyTorch's own.
    The values, the gradients and the choice among equal maxima (the first in the window) are
    ``max_pool2d``'s (``tests/test_algorithms.py`` checks all three against it), at less cost
    on a CPU. The lab's functional network (``lab.algorithms.inner``) pools this way; the
    module keeps PyTorch's layer.
    """
    if x.device.type == "cpu" and x.dim() == 4 and _plain(x):
        if not (x.requires_grad and torch.is_grad_enabled()):
            return F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 2).contiguous()
        if gather:
            with torch.no_grad():
                _, where = F.max_pool2d(x.detach().contiguous(memory_format=torch.channels_last), 2,
                                        return_indices=True)
            n, c, h, w = where.shape
            return x.flatten(2).gather(2, where.contiguous().flatten(2)).view(n, c, h, w)
    return F.max_pool2d(x, 2)


def _plain(x: torch.Tensor) -> bool:
    """Whether ``x`` is an ordinary tensor, not one wrapped by a ``torch.func`` transform (vmap, grad)."""
    wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return wrapped is not None and not wrapped(x)


class MaxPool2x2(nn.Module):
    """:func:`max_pool_2x2` as a layer (no parameters: checkpoints are those of ``nn.MaxPool2d(2)``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool_2x2(x)


def conv_block(in_channels: int, out_channels: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.GroupNorm(groups, out_channels),
        nn.ReLU(),
        MaxPool2x2(),
    )


class Conv4(nn.Module):
    """Images ``(n, 1, 28, 28)`` -> embeddings ``(n, hidden * (size // 16) ** 2)``."""

    def __init__(self, in_channels: int = 1, hidden: int = 64, groups: int = 8):
        super().__init__()
        self.hidden = hidden
        self.blocks = nn.Sequential(
            conv_block(in_channels, hidden, groups),
            conv_block(hidden, hidden, groups),
            conv_block(hidden, hidden, groups),
            conv_block(hidden, hidden, groups),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).flatten(1)

    def out_features(self, image_size: int = 28) -> int:
        side = image_size
        for _ in range(4):
            side //= 2
        return self.hidden * side * side


class Classifier(nn.Module):
    """Conv4 followed by a linear head: images ``(n, 1, 28, 28)`` -> logits ``(n, n_way)``."""

    def __init__(self, n_way: int, hidden: int = 64, image_size: int = 28):
        super().__init__()
        self.encoder = Conv4(hidden=hidden)
        self.head = nn.Linear(self.encoder.out_features(image_size), n_way)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def prototypes(embeddings: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """Class means: embeddings ``(..., n, d)`` and labels ``(..., n)`` -> ``(..., n_way, d)``."""
    one_hot = F.one_hot(labels, n_way).to(embeddings.dtype)  # (..., n, n_way)
    sums = one_hot.transpose(-1, -2) @ embeddings
    return sums / one_hot.sum(-2).unsqueeze(-1)


def proto_logits(queries: torch.Tensor, protos: torch.Tensor, distance: str = "euclidean") -> torch.Tensor:
    """Queries ``(..., q, d)`` against prototypes ``(..., n_way, d)`` -> logits ``(..., q, n_way)``."""
    if distance == "cosine":
        return 10.0 * F.normalize(queries, dim=-1) @ F.normalize(protos, dim=-1).transpose(-1, -2)
    return -torch.cdist(queries, protos).pow(2)
