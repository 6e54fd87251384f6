"""Datasets as in-memory uint8 tensors, with a deterministic validation slice.

Every dataset becomes three ``ImageSet`` splits of uint8 images (N, C, H, W):
``train`` (the training set minus the validation slice), ``val`` (a fixed slice carved
from the training set, used to choose blocks; the test split never chooses anything)
and ``test``. Images stay uint8 until the batch reaches the device, where ``normalize``
turns them into floats; augmentation works on whole uint8 batches (``augment``).

Loading uses torchvision's dataset classes; nothing is downloaded unless asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from sdprune.data.augment import Augment
from sdprune.data.images import ImageSet, seeded_index
from sdprune.data.readers import load_splits
from sdprune.errors import SdpruneError

DATASETS = ("digits", "synthetic", "mnist", "fashion-mnist", "cifar10", "cifar100", "svhn", "imagefolder")
VAL_FRACTION, VAL_MAX = 0.1, 5000
# The validation slice and the images normalisation is measured on are properties of the
# dataset, not of a run: one fixed seed, whatever --seed says.
DATASET_SEED = 0


@dataclass
class DataBundle:
    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet
    classes: list[str]
    mean: list[float]
    std: list[float]
    augment: Augment = field(default_factory=Augment)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    def meta(self) -> dict:
        """What a checkpoint must remember about its data (JSON-able)."""
        return {"dataset": self.name, "classes": self.classes, "input_shape": list(self.input_shape),
                "mean": self.mean, "std": self.std}


def load_data(name: str, data_dir: str | None = None, download: bool = False,
              image_size: int | None = None, val_fraction: float = VAL_FRACTION,
              workers: int = 0) -> DataBundle:
    """Load a dataset by name, split off the validation slice and compute normalisation.

    ``workers`` processes decode image files (imagefolder); the other sets are read whole.
    """

    if name not in DATASETS:
        raise SdpruneError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if data_dir is not None and name not in ("digits", "synthetic") and not download \
            and not Path(data_dir).is_dir():
        raise SdpruneError(f"data folder {data_dir} does not exist")
    train, test, classes, augment = load_splits(name, data_dir, download, image_size, workers)
    if len(train) < 2 or len(test) < 1:
        raise SdpruneError(f"dataset {name!r} is too small (train {len(train)}, test {len(test)})")
    train, val = split_validation(train, val_fraction)
    mean, std = channel_stats(train.images)
    return DataBundle(name, train, val, test, classes, mean, std, augment)


def split_validation(train: ImageSet, fraction: float = VAL_FRACTION) -> tuple[ImageSet, ImageSet]:
    """Carve a fixed held-out slice (seeded by the dataset, not the run) off the training set."""
    n_val = max(1, min(VAL_MAX, int(round(len(train) * fraction))))
    in_val = torch.zeros(len(train), dtype=torch.bool)
    in_val[seeded_index(len(train), n_val, DATASET_SEED)] = True
    return train.subset(torch.nonzero(~in_val).flatten()), train.subset(torch.nonzero(in_val).flatten())


def channel_stats(images: Tensor, max_images: int = 10000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units.

    Above ``max_images`` a fixed random subset is measured: image sets are often sorted by
    class (imagefolder), so the first images would describe the first classes only.
    """
    if len(images) > max_images:
        images = images[seeded_index(len(images), max_images, DATASET_SEED)]
    x = images.float().div_(255).transpose(0, 1).reshape(images.shape[1], -1)
    std = x.std(dim=1).clamp_min(1e-3)
    return [round(v, 6) for v in x.mean(dim=1).tolist()], [round(v, 6) for v in std.tolist()]


def data_for_checkpoint(meta: dict, dataset: str | None = None, data_dir: str | None = None) -> DataBundle:
    """The dataset a checkpoint was trained on (or another one), normalised as it was.

    Normalisation always comes from the checkpoint: the network was trained with it.
    """
    config = meta.get("config", {})
    same = dataset is None or dataset == meta["data"]["dataset"]
    name = meta["data"]["dataset"] if same else dataset
    bundle = load_data(name, data_dir or (config.get("data_dir") if same else None),
                       download=bool(config.get("download")) and same,
                       image_size=meta["data"]["input_shape"][-1] if name in ("imagefolder", "synthetic") else None)
    if tuple(bundle.input_shape) != tuple(meta["data"]["input_shape"]):
        raise SdpruneError(f"dataset {name} has images of shape {list(bundle.input_shape)}, "
                           f"the model expects {meta['data']['input_shape']}")
    bundle.mean, bundle.std = list(meta["data"]["mean"]), list(meta["data"]["std"])
    return bundle
