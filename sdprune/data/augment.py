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


def augment(images: Tensor, spec: Augment, generator: torch.Generator, part: tuple[int, int] | None = None,
            ) -> Tensor:
    """Per-sample random crop after zero padding, and horizontal flip, on a uint8 batch.

    Done on whole batches with an explicit CPU generator (torchvision's v2 transforms would
    apply one crop to the whole batch, and per-sample transforms in workers draw from
    per-worker RNGs), so a resumed run reproduces every crop exactly. Only the random
    draws are made on the CPU: the pixels stay on the images' device (on a GPU the
    augmentation costs the host nothing). ``part`` = (offset, total): these images are rows
    offset.. of a batch of ``total`` (one rank's share of a distributed batch), and get
    exactly the crops and flips those rows get in the whole batch.
    """
    if spec.pad <= 0 and not spec.flip:
        return images
    n, _, h, w = images.shape
    offset, total = part if part is not None else (0, n)
    rows = slice(offset, offset + n)
    device = images.device
    out = images
    if spec.pad > 0:
        p = spec.pad
        padded = F.pad(images, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (total,), generator=generator)[rows].to(device, non_blocking=True)
        dx = torch.randint(0, 2 * p + 1, (total,), generator=generator)[rows].to(device, non_blocking=True)
        ys = (dy[:, None] + torch.arange(h, device=device))[:, :, None]
        xs = (dx[:, None] + torch.arange(w, device=device))[:, None, :]
        out = padded.permute(0, 2, 3, 1)[torch.arange(n, device=device)[:, None, None], ys, xs].permute(0, 3, 1, 2)
    if spec.flip:
        flip = (torch.rand(total, generator=generator) < 0.5)[rows].to(device, non_blocking=True)
        out = torch.where(flip.view(-1, 1, 1, 1), out.flip(3), out)
    return out.contiguous()
