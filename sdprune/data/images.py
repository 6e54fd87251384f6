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

from sdprune.depth.gates import step_seed
from sdprune.errors import SdpruneError


@dataclass
class ImageSet:
    images: Tensor  # uint8 (N, C, H, W)
    labels: Tensor  # int64 (N,)

    def __len__(self) -> int:
        return int(self.labels.numel())

    def subset(self, index: Tensor) -> "ImageSet":
        return ImageSet(self.images[index], self.labels[index])

    def load_batches(self, chunks: Sequence[Tensor], crop_seeds: Sequence[Tensor] | None = None,
                     ) -> Iterator[tuple[Tensor, Tensor]]:
        """The images and labels of each index tensor in ``chunks``, in order.

        ``crop_seeds`` are for decoded folders; in-memory images are augmented whole
        batches at a time by the training step (``sdprune.data.augment``).
        """
        for index in chunks:
            yield self.images[index], self.labels[index]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def in_memory(self) -> "ImageSet":
        """This set (already decoded; ``FolderSet.in_memory`` decodes a folder)."""
        return self

    def to(self, device: torch.device | str) -> "ImageSet":
        """The same images on ``device``: on a GPU, batches are then cut and augmented there,
        and the host does nothing per step but draw random numbers."""
        return ImageSet(self.images.to(device), self.labels.to(device))

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


def iterate_batches(data, batch_size: int, generator: torch.Generator | None = None,
                    drop_last: bool = False, crop_seed: int | None = None,
                    shard: tuple[int, int] | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (uint8 images, labels) batches of an ImageSet or a FolderSet.

    Shuffled when a generator is given. ``crop_seed`` asks a FolderSet for training crops,
    each image's drawn from (crop_seed, its position in this order), so the batches are a
    function of the generator's seed and ``crop_seed`` alone. ``shard`` = (rank, world):
    each batch is cut into ``world`` contiguous parts and this process gets part ``rank``
    (distributed training: the ranks together see exactly the single-process batch).
    """
    n = len(data)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = (n // batch_size) * batch_size if drop_last else n
    chunks, seeds = [], []
    for start in range(0, stop, batch_size):
        positions = torch.arange(start, min(start + batch_size, n))
        positions = positions[shard_rows(len(positions), shard)]
        chunks.append(order[positions])
        if crop_seed is not None:
            seeds.append(torch.tensor([step_seed(crop_seed, p) for p in positions.tolist()], dtype=torch.long))
    return data.load_batches(chunks, seeds if crop_seed is not None else None)


def shard_rows(total: int, shard: tuple[int, int] | None) -> slice:
    """The rows of a batch of ``total`` that rank ``shard[0]`` of ``shard[1]`` takes (all when None).

    Contiguous parts in rank order, the first ``total % world`` one row longer (as
    ``Tensor.tensor_split`` cuts): the one place a rank's share of a batch is decided.
    """
    if shard is None:
        return slice(0, total)
    rank, world = shard
    base, extra = divmod(total, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def drops_last(n: int, batch_size: int) -> bool:
    """Whether training on ``n`` images drops the ragged last batch: only when it is not the
    only batch (a tiny set still trains), so every step sees ``batch_size`` images."""
    return n > batch_size


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches ``iterate_batches`` yields for ``n`` images."""
    return n // batch_size if drop_last else math.ceil(n / batch_size)
