"""Readers for each supported dataset, returning uint8 (train, test) ImageSets.

torchvision does the reading for the public sets; ``digits`` (scikit-learn's embedded 8x8
digits) and ``synthetic`` need no files at all.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sdprune.data.augment import Augment
from sdprune.data.images import ImageSet
from sdprune.errors import SdpruneError

DIGIT_CLASSES = [str(i) for i in range(10)]
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"  # Debian: dataset-fashion-mnist


def default_data_dir(name: str) -> str:
    """Where a dataset is looked for when --data-dir is not given."""
    root = os.environ.get("SDPRUNE_DATA", os.path.join(os.path.expanduser("~"), ".cache", "sdprune", "data"))
    return os.path.join(root, name)


def load_splits(name: str, data_dir: str | None, download: bool, image_size: int | None,
                ) -> tuple[ImageSet, ImageSet, list[str], Augment]:
    """The (train, test) splits, class names and augmentation of a set read whole into memory
    (image folders are ``sdprune.data.folder``'s)."""
    if name == "digits":
        train, test = load_digits()
        return train, test, DIGIT_CLASSES, Augment(pad=1)
    if name == "synthetic":
        train, test, classes = make_synthetic(image_size or 32)
        return train, test, classes, Augment(pad=2, flip=True)
    root = data_dir or default_data_dir(name)
    try:
        if name in ("mnist", "fashion-mnist"):
            train, test, classes = load_mnist_like(name, root, download)
            return train, test, classes, Augment(pad=2, flip=name == "fashion-mnist")
        if name in ("cifar10", "cifar100"):
            train, test, classes = load_cifar(name, root, download)
            return train, test, classes, Augment(pad=4, flip=True)
        train, test, classes = load_svhn(root, download)
        return train, test, classes, Augment(pad=4)  # digits: flipping makes no sense
    except (RuntimeError, FileNotFoundError, OSError) as err:
        hint = "" if download else " (pass --download to fetch it, or --data-dir to point at it)"
        raise SdpruneError(f"cannot load {name} from {root}: {str(err).splitlines()[0]}{hint}") from None


def load_digits() -> tuple[ImageSet, ImageSet]:
    """scikit-learn's 1,797 8x8 digits, a fixed 80/20 train/test split."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = torch.from_numpy(np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1234))
    n_test = len(labels) // 5
    test_idx, train_idx = perm[:n_test].sort().values, perm[n_test:].sort().values
    return ImageSet(images[train_idx], labels[train_idx]), ImageSet(images[test_idx], labels[test_idx])


def make_synthetic(size: int = 32, num_classes: int = 10, n_train: int = 2000, n_test: int = 500,
                   channels: int = 3, seed: int = 0) -> tuple[ImageSet, ImageSet, list[str]]:
    """Generated images: a smooth random prototype per class plus noise and a random shift."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(num_classes, channels, 4, 4, generator=g)
    protos = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)

    def draw(n: int) -> ImageSet:
        labels = torch.randint(0, num_classes, (n,), generator=g)
        noise = torch.rand(n, channels, size, size, generator=g)
        x = 0.6 * protos[labels] + 0.4 * noise
        shifts = torch.randint(-2, 3, (2,), generator=g).tolist()
        x = torch.roll(x, shifts=shifts, dims=(2, 3))
        return ImageSet((x * 255).round().to(torch.uint8), labels)

    return draw(n_train), draw(n_test), [f"class{i}" for i in range(num_classes)]


def _as_images(data, channels_last: bool) -> Tensor:
    t = torch.as_tensor(np.asarray(data))
    if t.dim() == 3:
        t = t.unsqueeze(1)
    elif channels_last:
        t = t.permute(0, 3, 1, 2)
    return t.to(torch.uint8).contiguous()


def load_mnist_like(name: str, root: str, download: bool) -> tuple[ImageSet, ImageSet, list[str]]:
    from torchvision import datasets as tvd

    cls = tvd.FashionMNIST if name == "fashion-mnist" else tvd.MNIST
    if name == "fashion-mnist" and not download:
        root = _stage_idx_gz(root, cls.__name__)
    sets = [cls(root=root, train=train, download=download) for train in (True, False)]
    train, test = (ImageSet(_as_images(s.data, False), s.targets.long()) for s in sets)
    return train, test, list(sets[0].classes)


def _stage_idx_gz(root: str, folder: str) -> str:
    """Let torchvision read bare idx .gz files (as Debian's dataset-fashion-mnist installs).

    torchvision expects ROOT/FashionMNIST/raw/<name> uncompressed; when that layout is
    missing but .gz files lie in ROOT (or the system folder), unpack them once into the
    cache and read from there.
    """
    if (Path(root) / folder / "raw" / "train-images-idx3-ubyte").exists():
        return root
    import gzip
    import shutil

    for source in (Path(root), Path(FASHION_MNIST_SYSTEM_DIR)):
        if (source / "train-images-idx3-ubyte.gz").exists():
            cache = Path(default_data_dir("fashion-mnist")) / "staged"
            raw = cache / folder / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            for gz in source.glob("*-ubyte.gz"):
                if not (raw / gz.stem).exists():
                    tmp = raw / (gz.stem + f".{os.getpid()}.tmp")
                    with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    os.replace(tmp, raw / gz.stem)
            return str(cache)
    return root


def load_cifar(name: str, root: str, download: bool) -> tuple[ImageSet, ImageSet, list[str]]:
    from torchvision import datasets as tvd

    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    sets = [cls(root=root, train=train, download=download) for train in (True, False)]
    train, test = (ImageSet(_as_images(s.data, True), torch.as_tensor(s.targets).long()) for s in sets)
    return train, test, list(sets[0].classes)


def load_svhn(root: str, download: bool) -> tuple[ImageSet, ImageSet, list[str]]:
    from torchvision import datasets as tvd

    sets = [tvd.SVHN(root=root, split=split, download=download) for split in ("train", "test")]
    train, test = (ImageSet(_as_images(s.data, False), torch.as_tensor(s.labels).long()) for s in sets)
    return train, test, [str(i) for i in range(10)]
