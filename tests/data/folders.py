"""Small image folders for the data tests: generated PNG and JPEG files of several shapes,
spoiled with unreadable ones, and the batches a set yields."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdprune.data.folder import FolderSet
from sdprune.data.images import iterate_batches
from sdprune.data.scan import scan_folder

SIZE = 16


def make_folder(root: Path, classes: Sequence[str] = ("ant", "bee", "cat"), n_train: int = 12, n_test: int = 3,
                gray: bool = False, seed: int = 0) -> Path:
    """ROOT/train and ROOT/test of small images of several shapes (PNG and JPEG), random pixels
    around one brightness per class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                h, w = int(rng.integers(18, 40)), int(rng.integers(18, 40))  # never square, never SIZE
                base = 40 + 80 * c
                pixels = np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels).convert("L") if gray else Image.fromarray(pixels)
                image.save(root / split / cls / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def spoil(root: Path) -> list[str]:
    """Add two unreadable files to ROOT/train: random bytes named .jpg, and a truncated PNG."""
    corrupt = root / "train" / "ant" / "corrupt.jpg"
    corrupt.write_bytes(np.random.default_rng(1).integers(0, 256, 600, dtype=np.uint8).tobytes())
    good = (root / "train" / "bee" / "1.png").read_bytes()
    truncated = root / "train" / "bee" / "truncated.png"
    truncated.write_bytes(good[:len(good) // 2])
    return [str(corrupt), str(truncated)]


def folder_set(root: Path, **kw: Any) -> FolderSet:
    """ROOT/train as a streamed set of SIZE-px crops."""
    paths, targets, _ = scan_folder(str(root / "train"))
    return FolderSet(paths, targets, SIZE, **kw)


def batches(data: Any, crop_seed: int | None = None, batch_size: int = 8, order_seed: int | None = 3,
            **kw: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every batch of one pass over ``data`` (shuffled by ``order_seed``; None: in order)."""
    generator = torch.Generator().manual_seed(order_seed) if order_seed is not None else None
    return list(iterate_batches(data, batch_size, generator, crop_seed=crop_seed, **kw))


def same(a: list, b: list) -> bool:
    """Whether two lists of (images, labels) batches are equal, batch for batch."""
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(a, b))
