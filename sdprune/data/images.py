"""Images as in-memory uint8 tensors: the ImageSet, batching, and normalisation on the device.

Images stay uint8 until a batch reaches the device, where ``normalize`` turns them into
floats: a quarter of the memory and of the host-to-device traffic of float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import Tensor

from sdprune.errors import SdpruneError


@dataclass
class ImageSet:
    images: Tensor  # uint8 (N, C, H, W)
    labels: Tensor  # int64 (N,)

    def __len__(self) -> int:
        return int(self.labels.numel())

    def subset(self, index: Tensor) -> "ImageSet":
        return ImageSet(self.images[index], self.labels[index])

    def sample(self, n: int | None, seed: int = 0) -> "ImageSet":
        """A seeded random subset of ``n`` images in their original order (all of them if None).

        Every place that uses part of a set takes it from here, never the first N: an image
        folder is sorted by class, so its first images would all come from the first classes.
        """
        if n is not None and n < 1:
            raise SdpruneError(f"a sample needs at least 1 image, got {n}")
        if n is None or n >= len(self):
            return self
        return self.subset(seeded_index(len(self), n, seed))


def seeded_index(total: int, n: int, seed: int) -> Tensor:
    """Indices of a seeded random ``n`` of ``total`` items, in increasing order.

    The one way sdprune takes part of a set (validation slice, normalisation images,
    statistics images): random, so a class-sorted set is represented; seeded, so the
    same part every time; in order, so the part keeps the set's order.
    """
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def normalization(mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu",
                  ) -> tuple[Tensor, Tensor]:
    """``mean`` and ``std`` as (1, C, 1, 1) float32 tensors on ``device``.

    Build them once per loop and pass them to ``normalize``: building them is a
    host-to-device copy, which on a GPU waits for the device.
    """
    return (torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1),
            torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1))


def normalize(images: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """uint8 (N, C, H, W) -> normalised float32 on the images' device.

    ``mean`` and ``std`` are per-channel lists, or ``normalization``'s tensors already on
    that device (what a loop over batches passes).
    """
    if not isinstance(mean, Tensor) or not isinstance(std, Tensor):
        mean, std = normalization(mean, std, images.device)
    return (images.float().div_(255) - mean) / std


def iterate_batches(data: ImageSet, batch_size: int, generator: torch.Generator | None = None,
                    drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (images, labels) batches; shuffled when a generator is given."""
    n = len(data)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = (n // batch_size) * batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        index = order[start:start + batch_size]
        yield data.images[index], data.labels[index]


def drops_last(n: int, batch_size: int) -> bool:
    """Whether training on ``n`` images drops the ragged last batch: only when it is not the
    only batch (a tiny set still trains), so every step sees ``batch_size`` images."""
    return n > batch_size


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches ``iterate_batches`` yields for ``n`` images."""
    return n // batch_size if drop_last else math.ceil(n / batch_size)
