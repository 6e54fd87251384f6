"""Deploy fixtures: a tiny dataset whose splits are sorted by class, as an imagefolder's are."""

from __future__ import annotations

import pytest
import torch

from sdprune.data.bundle import DataBundle, channel_stats
from sdprune.data.images import ImageSet

LABEL_STEP = 20  # pixel (0, 0) of every image is LABEL_STEP * its label, so a sample shows its classes


def _sorted_split(per_class: int, seed: int) -> ImageSet:
    labels = torch.arange(10).repeat_interleave(per_class)  # 0, 0, ..., 1, 1, ..., 9
    images = torch.randint(0, 256, (len(labels), 1, 8, 8), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(seed))
    images[:, 0, 0, 0] = (labels * LABEL_STEP).to(torch.uint8)
    return ImageSet(images, labels)


@pytest.fixture(scope="session")
def sorted_bundle() -> DataBundle:
    """10 classes of 8x8 images, train (300) and test (100) sorted by class: the first 10% are class 0."""
    train, test = _sorted_split(30, 1), _sorted_split(10, 2)
    mean, std = channel_stats(train.images)
    return DataBundle("sorted", train, train.subset(torch.arange(10)), test, [str(i) for i in range(10)], mean, std)


@pytest.fixture(scope="session")
def label_of():
    """The labels encoded in uint8 images of ``sorted_bundle`` (their pixel (0, 0))."""
    return lambda images: (images[:, 0, 0, 0].long() // LABEL_STEP).tolist()
