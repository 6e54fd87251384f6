"""The paper's augmentation (pad + random crop, horizontal flip) on whole uint8 batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class Augment:
    """The paper's augmentation for CIFAR/SVHN-like sets: pad + random crop, optional flip."""
    pad: int = 0
    flip: bool = False


def augment(images: Tensor, spec: Augment, generator: torch.Generator) -> Tensor:
    """Per-sample random crop after zero padding, and horizontal flip, on a uint8 batch.

    Done on whole batches with an explicit generator (torchvision's v2 transforms would
    apply one crop to the whole batch, and per-sample transforms in workers draw from
    per-worker RNGs), so a resumed run reproduces every crop exactly.
    """
    if spec.pad <= 0 and not spec.flip:
        return images
    n, _, h, w = images.shape
    out = images
    if spec.pad > 0:
        p = spec.pad
        padded = F.pad(images, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, :, None]
        cols = (dx[:, None] + torch.arange(w))[:, None, :]
        out = padded.permute(0, 2, 3, 1)[torch.arange(n)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if spec.flip:
        flip = torch.rand(n, generator=generator) < 0.5
        out = torch.where(flip.view(-1, 1, 1, 1), out.flip(3), out)
    return out.contiguous()
