"""Datasets as three splits of uint8 images, with a deterministic validation slice.

Every dataset becomes three splits: ``train`` (the training set minus the validation
slice), ``val`` (a fixed slice carved from the training set, used to choose blocks; the
test split never chooses anything) and ``test``. A split is an ``ImageSet`` (uint8
(N, C, H, W) in memory) or, for a large image folder, a ``FolderSet`` that decodes its
files a batch at a time (``sdprune.data.folder``); both deliver the same uint8 batches.
Images stay uint8 until the batch reaches the device, where ``normalize`` turns them into
floats; augmentation works on whole uint8 batches (``augment``).

Loading uses torchvision's dataset classes and Pillow's decoders; nothing is downloaded unless asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from sdprune.choices import BAD_IMAGES, DATA_MODES, DATASETS, FOLDER_IMAGE_SIZE, MEMORY_BUDGET
from sdprune.data.augment import Augment
from sdprune.data.folder import FolderSet, eval_resize_for, open_folder
from sdprune.data.images import ImageSet, seeded_index
from sdprune.data.readers import load_splits
from sdprune.errors import SdpruneError

STREAM_STATS_IMAGES = 1000  # a streamed folder's normalisation is measured on this many images
STATS_CHUNK = 256           # channel_stats histograms this many images at a time
VAL_FRACTION, VAL_MAX = 0.1, 5000
# The validation slice and the images normalisation is measured on are properties of the
# dataset, not of a run: one fixed seed, whatever --seed says.
DATASET_SEED = 0


@dataclass
class DataBundle:
    name: str
    train: ImageSet | FolderSet
    val: ImageSet | FolderSet
    test: ImageSet | FolderSet
    classes: list[str]
    mean: list[float]
    std: list[float]
    augment: Augment = field(default_factory=Augment)
    # unreadable files skipped while decoding a folder into memory (each streamed split
    # records those it meets in its own ``FolderSet.skipped``)
    skipped: list[str] = field(default_factory=list)
    # an image folder's reading: {"mode": "memory" | "stream", "resize": the side evaluation
    # images are resized to before their centre crop}; recorded in checkpoints, so every
    # later command reads the folder exactly as the run did
    view: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.train.input_shape

    def meta(self) -> dict:
        """What a checkpoint must remember about its data (JSON-able)."""
        return {"dataset": self.name, "classes": self.classes, "input_shape": list(self.input_shape),
                "mean": self.mean, "std": self.std, **self.view}


def load_data(name: str, data_dir: str | None = None, download: bool = False,
              image_size: int | None = None, val_fraction: float = VAL_FRACTION,
              workers: int = 0, data_mode: str = "auto", bad_images: str = "fail",
              eval_resize: int | None = None, pin_memory: bool = False,
              normalization: tuple[list[float], list[float]] | None = None,
              memory_budget: int = MEMORY_BUDGET, channels: int | None = None) -> DataBundle:
    """Load a dataset by name, split off the validation slice and compute normalisation.

    An image folder is decoded into memory once (``data_mode`` "memory"), or streamed from
    its files by ``workers`` DataLoader processes ("stream"; see ``sdprune.data.folder``);
    "auto" streams it when its decoded images would exceed ``memory_budget`` bytes. Either way
    unreadable files fail the load or are skipped (``bad_images``). The other sets are read
    whole into memory. ``normalization`` (mean, std), when a checkpoint already fixed it,
    is used instead of measuring the training images; ``channels`` fixes a folder's
    channels (else probed from its files).
    """

    if name not in DATASETS:
        raise SdpruneError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if data_mode not in DATA_MODES:
        raise SdpruneError(f"--data-mode must be one of {', '.join(DATA_MODES)}, got {data_mode!r}")
    if bad_images not in BAD_IMAGES:
        raise SdpruneError(f"--bad-images must be one of {', '.join(BAD_IMAGES)}, got {bad_images!r}")
    if data_mode == "stream" and name != "imagefolder":
        raise SdpruneError(f"--data-mode stream reads image folders; {name} is read into memory")
    if data_dir is not None and name not in ("digits", "synthetic") and not download \
            and not Path(data_dir).is_dir():
        raise SdpruneError(f"data folder {data_dir} does not exist")
    skipped: list[str] = []
    view: dict = {}
    if name == "imagefolder":
        if data_dir is None:
            raise SdpruneError("--dataset imagefolder needs --data-dir FOLDER (with train/ and test/ or val/)")
        size = image_size or FOLDER_IMAGE_SIZE
        train, test, classes = open_folder(Path(data_dir), size, workers, bad_images, eval_resize, pin_memory,
                                           channels)
        _check_size(name, train, test)
        # split by file, before any decoding: the same validation files in either mode
        train, val = split_validation(train, val_fraction)
        decoded = (len(train) + len(val) + len(test)) * train.channels * size * size
        if data_mode == "stream" or (data_mode == "auto" and decoded > memory_budget):
            augment = Augment(flip=True)  # the random resized crop is drawn by the decoding workers
            view = {"mode": "stream", "resize": eval_resize or eval_resize_for(size)}
        else:  # decoded once (the evaluation view); augmented like the other in-memory sets
            view = {"mode": "memory", "resize": eval_resize or size}
            folders = [replace(split, resize=view["resize"]) for split in (train, val, test)]
            train, val, test = (folder.in_memory() for folder in folders)
            skipped = [path for folder in folders for path in folder.skipped]
            _check_size(name, train, test)  # what was readable
            augment = Augment(pad=max(1, size // 8), flip=True)
    else:
        train, test, classes, augment = load_splits(name, data_dir, download, image_size)
        _check_size(name, train, test)
        train, val = split_validation(train, val_fraction)
    if normalization is None:
        # a streamed split measures a sample (of its own: the files it finds unreadable are
        # reported when training meets them)
        sample = replace(train.sample(STREAM_STATS_IMAGES, DATASET_SEED), skipped={}) \
            if isinstance(train, FolderSet) else train
        normalization = channel_stats(sample.in_memory().images)
    mean, std = (list(v) for v in normalization)
    return DataBundle(name, train, val, test, classes, mean, std, augment, skipped, view)


def _check_size(name: str, train: ImageSet | FolderSet, test: ImageSet | FolderSet) -> None:
    if len(train) < 2 or len(test) < 1:
        raise SdpruneError(f"dataset {name!r} is too small (train {len(train)}, test {len(test)})")


def split_validation(train: ImageSet, fraction: float = VAL_FRACTION) -> tuple[ImageSet, ImageSet]:
    """Carve a fixed held-out slice (seeded by the dataset, not the run) off the training set."""
    n_val = max(1, min(VAL_MAX, int(round(len(train) * fraction))))
    in_val = torch.zeros(len(train), dtype=torch.bool)
    in_val[seeded_index(len(train), n_val, DATASET_SEED)] = True
    return train.subset(torch.nonzero(~in_val).flatten()), train.subset(torch.nonzero(in_val).flatten())


def channel_stats(images: Tensor, max_images: int = 10000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units.

    Above ``max_images`` a fixed random subset is measured: image sets are often sorted by
    class (imagefolder), so the first images would describe the first classes only. Computed
    from each channel's histogram of its 256 values: exact, with no float copy of the images
    (10,000 images of 224 x 224 take about a second).
    """
    if len(images) == 0:
        raise SdpruneError("no readable training images to measure the normalisation on")
    index = seeded_index(len(images), max_images, DATASET_SEED) if len(images) > max_images \
        else torch.arange(len(images))
    counts = torch.zeros(images.shape[1], 256, dtype=torch.float64)
    for chunk in index.split(STATS_CHUNK):  # a copy of a chunk at a time, never of the sample
        part = images[chunk]
        for c in range(images.shape[1]):
            counts[c] += torch.bincount(part[:, c].flatten(), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    n = counts.sum(dim=1)
    mean = (counts * values).sum(dim=1) / n
    var = (counts * (values - mean[:, None]).square()).sum(dim=1) / (n - 1).clamp_min(1)
    std = var.sqrt().clamp_min(1e-3)
    return [round(v, 6) for v in mean.tolist()], [round(v, 6) for v in std.tolist()]


def data_for_checkpoint(meta: dict, dataset: str | None = None, data_dir: str | None = None) -> DataBundle:
    """The dataset a checkpoint was trained on (or another one), normalised as it was.

    Normalisation always comes from the checkpoint: the network was trained with it. A
    folder is read as the run read it (data mode and evaluation resize as recorded, the
    run's unreadable-file policy), whatever its size is now. Its classes must be the
    network's (``check_classes``): ``meta`` holds ``data.classes``, as every checkpoint does.
    """
    config, recorded = meta.get("config", {}), dict(meta["data"])
    if meta["data"]["dataset"] == "imagefolder" and "mode" not in recorded:
        # written before the view was recorded: such runs decoded into memory at their size
        recorded.update(mode="memory", resize=recorded["input_shape"][-1])
    same = dataset is None or dataset == meta["data"]["dataset"]
    name = meta["data"]["dataset"] if same else dataset
    folder = name == "imagefolder"
    bundle = load_data(name, data_dir or (config.get("data_dir") if same else None),
                       download=bool(config.get("download")) and same,
                       image_size=meta["data"]["input_shape"][-1] if name in ("imagefolder", "synthetic") else None,
                       workers=int(config.get("workers") or 0) if folder else 0,
                       data_mode=str(recorded.get("mode") or config.get("data_mode") or "auto")
                       if folder and same else "auto",
                       bad_images=str(config.get("bad_images") or "fail") if folder and same else "fail",
                       eval_resize=(recorded.get("resize") or config.get("eval_resize")) if folder and same else None,
                       normalization=(meta["data"]["mean"], meta["data"]["std"]),
                       channels=meta["data"]["input_shape"][0] if folder else None)
    if tuple(bundle.input_shape) != tuple(meta["data"]["input_shape"]):
        raise SdpruneError(f"dataset {name} has images of shape {list(bundle.input_shape)}, "
                           f"the model expects {meta['data']['input_shape']}")
    check_classes(bundle, meta["data"])
    return bundle


def check_classes(data: DataBundle, recorded: dict) -> None:
    """Refuse data whose classes are not the ones a network predicts (``recorded``: a checkpoint's
    ``meta.data``, or an ONNX file's metadata): the one check every command makes.

    An image folder read for a network trained on one must hold the same class folders:
    labels are positions in the sorted names, so a class added, removed or renamed since
    training shifts them (and a label past the head crashes the loss). Other data must have
    as many classes as the network predicts.
    """
    classes, trained = list(data.classes), list(recorded["classes"])
    folders = data.name == recorded.get("dataset") == "imagefolder"
    if classes == trained or (not folders and len(classes) == len(trained)):
        return
    detail = ""
    if folders:
        new, gone = [c for c in classes if c not in trained], [c for c in trained if c not in classes]
        parts = [f"{label} {_names(names)}" for label, names in (("new since training:", new), ("missing:", gone))
                 if names]
        detail = f" ({'; '.join(parts)})" if parts else ""
    raise SdpruneError(f"dataset {data.name} has {len(classes)} classes, the model predicts {len(trained)}{detail}"
                       if len(classes) != len(trained) else
                       f"dataset {data.name}'s classes are not the ones the model was trained on{detail}")


def _names(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
