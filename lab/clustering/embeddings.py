"""Task embeddings: a task's support set becomes one vector, whatever the order or naming of its classes.

``representation``: statistics of the support set's features under the encoder.
``gradient``: the gradient of the support loss of the meta-learned initialisation (TSA-MAML).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lab.clustering.sources import TaskSet
from lab.device import CPU_CHUNK
from lab.models import proto_logits, prototypes

EMBEDDINGS = ("representation", "gradient")

def _encoder(model) -> torch.nn.Module:
    encoder = getattr(model, "encoder", None)
    if encoder is None or not hasattr(encoder, "blocks"):
        raise ValueError(f"task embeddings need a model with a Conv4 encoder; {type(model).__name__} has none")
    return encoder


def _hidden(encoder, support_x: torch.Tensor) -> torch.Tensor:
    """Support images ``(T, n, 1, H, W)`` -> the input of the encoder's last block ``(T, n, C, h, w)``."""
    with torch.no_grad():
        h = encoder.blocks[:-1](support_x.reshape(-1, *support_x.shape[-3:]))
    return h.reshape(*support_x.shape[:2], *h.shape[1:])


def representation_embedding(model, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> torch.Tensor:
    """Mean and standard deviation over the support set of the features entering the encoder's
    last block, scaled to unit length: ``(T, n, 1, H, W)`` -> ``(T, 2 C h w)`` (1152 for Conv4).

    Statistics over the whole support set, so neither the order of the examples nor the naming
    of the classes changes them. The penultimate features keep more of the look of the images
    (stroke width, blur, size) than the final embedding, which is trained to discard it.
    """
    h = _hidden(_encoder(model), support_x).flatten(2)  # (T, n, C h w)
    stats = torch.cat([h.mean(1), h.std(1, unbiased=False)], -1)
    return F.normalize(stats, dim=-1)


def gradient_embedding(model, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> torch.Tensor:
    """Per-task gradient of the prototype classifier's support loss w.r.t. the encoder's last block.

    ``(T, n, 1, H, W)``, labels ``(T, n)`` -> ``(T, 37056)`` for Conv4: conv bias, norm scale and
    shift, then the conv weights, scaled to unit length (the direction of the update). As
    TSA-MAML's adapted parameters are the initialisation minus a step along this gradient,
    clustering the gradients clusters the adapted models. The loss sums over classes, so
    relabelling the classes leaves it, and its gradient, unchanged.

    All tasks go through one batched graph: the bias and norm parameters get one copy per task
    (so autograd returns per-task gradients), and the conv-weight gradient is the product of the
    per-task output gradient with the unfolded input.
    """
    encoder = _encoder(model)
    conv, norm = encoder.blocks[-1][0], encoder.blocks[-1][1]
    h = _hidden(encoder, support_x)  # (T, n, C, s, s)
    T, n = h.shape[:2]
    per_task = lambda p: p.detach().expand(T, -1).clone().requires_grad_()  # noqa: E731
    bias, scale, shift = per_task(conv.bias), per_task(norm.weight), per_task(norm.bias)
    distance = getattr(getattr(model, "hparams", None), "distance", "euclidean")
    with torch.enable_grad():
        out = F.conv2d(h.flatten(0, 1), conv.weight.detach(), padding=conv.padding).unflatten(0, (T, n))
        out = out + bias[:, None, :, None, None]
        out.retain_grad()
        a = F.group_norm(out.flatten(0, 1), norm.num_groups, eps=norm.eps).unflatten(0, (T, n))
        a = a * scale[:, None, :, None, None] + shift[:, None, :, None, None]
        z = encoder.blocks[-1][3](F.relu(a.flatten(0, 1))).flatten(1).unflatten(0, (T, n))
        logits = proto_logits(z, prototypes(z, support_y, n_way), distance)
        loss = F.cross_entropy(logits.flatten(0, 1), support_y.flatten(), reduction="sum") / n
        loss.backward()
    patches = F.unfold(h.flatten(0, 1), conv.kernel_size, padding=conv.padding)  # (T n, C k k, s s)
    patches = patches.unflatten(0, (T, n)).transpose(2, 3).flatten(1, 2)  # (T, n s s, C k k)
    out_grad = out.grad.flatten(3).permute(0, 2, 1, 3).flatten(2)  # (T, C', n s s)
    weight_grad = torch.bmm(out_grad, patches).flatten(1)
    return F.normalize(torch.cat([bias.grad, scale.grad, shift.grad, weight_grad], -1), dim=-1)


EMBEDDING_FUNCTIONS = {"representation": representation_embedding, "gradient": gradient_embedding}


def embed_support(model, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int, embedding: str,
                  chunk: int | None = None, progress=None) -> torch.Tensor:
    """Embed a batch of support sets ``(T, n, 1, H, W)`` by the embedding named ``embedding`` -> ``(T, D)``.

    ``chunk`` tasks go through the encoder at a time: by default 250 on an accelerator, and on a
    CPU as many as make :data:`~lab.device.CPU_CHUNK` images, the CPU's fastest call size.
    ``progress(done, T)`` is called with the tasks embedded after each chunk.
    """
    if embedding not in EMBEDDING_FUNCTIONS:
        raise ValueError(f"embedding: unknown {embedding!r}; choose one of {', '.join(EMBEDDINGS)}")
    fn = EMBEDDING_FUNCTIONS[embedding]
    device = next(model.parameters()).device
    if chunk is None:
        chunk = max(1, CPU_CHUNK // max(1, support_x.shape[1])) if device.type == "cpu" else 250
    parts = []
    for i in range(0, len(support_x), chunk):
        parts.append(fn(model, support_x[i : i + chunk].to(device), support_y[i : i + chunk].to(device), n_way).cpu())
        if progress is not None:
            progress(min(i + chunk, len(support_x)), len(support_x))
    return torch.cat(parts).detach()


def embed_tasks(model, tasks: TaskSet, embedding: str = "representation", progress=None) -> np.ndarray:
    """The embedding of every task of ``tasks``: ``(n_tasks, D)`` float32; ``progress(done, n_tasks)`` as it goes."""
    model.eval()
    batch = tasks.batch()
    return embed_support(model, batch.support_x, batch.support_y, batch.n_way, embedding, progress=progress).numpy()
