"""Images as in-memory uint8 tensors: the ImageSet, batching, and normalisation on the device.

Images stay uint8 until a batch reaches the device, where ``normalize`` turns them into
floats: a quarter of the memory and of the host-to-device traffic of float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


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
        if n is None or n >= len(self):
            return self
        pick = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:max(1, n)]
        return self.subset(pick.sort().values)


def normalize(images: Tensor, mean: list[float], std: list[float]) -> Tensor:
    """uint8 (N, C, H, W) -> normalised float32 on the images' device."""
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float().div_(255) - m) / s


def iterate_batches(data: ImageSet, batch_size: int, generator: torch.Generator | None = None,
                    drop_last: bool = False):
    """Yield (images, labels) batches; shuffled when a generator is given."""
    n = len(data)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = (n // batch_size) * batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        index = order[start:start + batch_size]
        yield data.images[index], data.labels[index]


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)
