"""Augmentation of training episodes: small random affine changes and stroke thickness.

Each image of a training batch is rotated, scaled, sheared and shifted a little and, now and then,
drawn with a thicker or thinner stroke, so that a model meets handwriting in the variety a pen on the
drawing pad produces. The draw is a pure function of the run's seed and the step, so a resumed run
augments as the uninterrupted one would. Off by default (``TrainConfig.augment``): the published
protocols train without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lab.episodes import Episode


@dataclass(frozen=True)
class AffineRanges:
    rotation_deg: float = 15.0  # uniform in ±rotation
    scale: float = 0.15  # the size changes by a factor in 1 ± scale
    shear_deg: float = 10.0  # uniform in ±shear
    shift: float = 0.08  # of the image's side, in each direction
    thickness: float = 0.3  # the chance of a thicker (half of it) or thinner (the other half) stroke


RANGES = AffineRanges()


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random stream of one training step's augmentation."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**63)


def affine(x: torch.Tensor, angle: torch.Tensor, shear: torch.Tensor, scale: torch.Tensor,
           shift: torch.Tensor) -> torch.Tensor:
    """Images ``(n, 1, H, W)`` each rotated by ``angle`` and sheared by ``shear`` (radians, ``(n,)``), scaled by
    ``scale`` ``(n,)`` and shifted by ``shift`` ``(n, 2)`` (grid coordinates: the image spans 2 per side)."""
    n = x.shape[0]
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    # Output -> input coordinates: the inverse of scaling, shearing and rotating the drawing.
    theta = torch.stack([torch.stack([cos, -sin + cos * tan, shift[:, 0]], 1),
                         torch.stack([sin, cos + sin * tan, shift[:, 1]], 1)], 1) / scale.view(n, 1, 1)
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def thicker(x: torch.Tensor) -> torch.Tensor:
    """Bright strokes on dark, drawn thicker: a dimmer one-pixel halo around them."""
    return torch.maximum(x, 0.7 * F.max_pool2d(x, 3, 1, 1))


def thinner(x: torch.Tensor) -> torch.Tensor:
    """Bright strokes on dark, drawn thinner: the faint edges fade, the core stays."""
    return ((x - 0.35) / 0.65).clamp(min=0)


def augment_images(x: torch.Tensor, generator: torch.Generator, ranges: AffineRanges = RANGES) -> torch.Tensor:
    """Images ``(n, 1, H, W)`` in [0, 1], bright ink on dark -> the same images, each changed at random."""
    n = x.shape[0]
    u = lambda: torch.rand(n, generator=generator) * 2 - 1  # noqa: E731  uniform in [-1, 1]
    angle, shear = u() * math.radians(ranges.rotation_deg), u() * math.radians(ranges.shear_deg)
    scale = 1 + u() * ranges.scale
    shift = torch.stack([u(), u()], 1) * 2 * ranges.shift  # grid coordinates span 2 per side
    thick = torch.rand(n, generator=generator)
    out = affine(x, angle, shear, scale, shift)
    is_thicker = (thick < ranges.thickness / 2).to(x.device).view(n, 1, 1, 1)
    is_thinner = ((thick >= ranges.thickness / 2) & (thick < ranges.thickness)).to(x.device).view(n, 1, 1, 1)
    return torch.where(is_thicker, thicker(out), torch.where(is_thinner, thinner(out), out)).clamp_(0, 1)


def augment_episode(batch: Episode, generator: torch.Generator) -> Episode:
    """A batch of episodes (any leading dimensions) with its support and query images augmented."""
    def images(x: torch.Tensor) -> torch.Tensor:
        return augment_images(x.reshape(-1, *x.shape[-3:]), generator).reshape(x.shape)

    return batch._replace(support_x=images(batch.support_x), query_x=images(batch.query_x))
