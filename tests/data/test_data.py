"""Data layer: the validation slice, normalisation statistics, and every loader on small files in
the real formats."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from sdprune.data.augment import Augment
from sdprune.data.bundle import channel_stats, data_for_checkpoint, load_data, split_validation
from sdprune.data.images import ImageSet
from sdprune.errors import SdpruneError


def rows(images: torch.Tensor, labels: torch.Tensor) -> list[bytes]:
    """Sorted (label, pixels) byte strings: compares splits as multisets of examples."""
    return sorted(bytes([int(y)]) + x.numpy().tobytes() for x, y in zip(images, labels))


# -- splits ---------------------------------------------------------------------------
def test_digits_split_is_deterministic_and_a_partition():
    from sklearn.datasets import load_digits

    torch.manual_seed(123)  # the global RNG must not matter
    a = load_data("digits")
    torch.manual_seed(456)
    b = load_data("digits")
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, split).images, getattr(b, split).images)
        assert torch.equal(getattr(a, split).labels, getattr(b, split).labels)
    assert (len(a.train), len(a.val), len(a.test)) == (1294, 144, 359)
    assert a.input_shape == (1, 8, 8) and a.classes == [str(i) for i in range(10)]
    assert a.train.images.dtype == torch.uint8 and a.train.labels.dtype == torch.int64
    # train + val + test is exactly the embedded dataset, each image once.
    sk = load_digits()
    full = torch.from_numpy(np.rint(sk.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    parts = [a.train, a.val, a.test]
    together = rows(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))
    assert together == rows(full, torch.from_numpy(sk.target))
    assert a.mean == pytest.approx(channel_stats(a.train.images)[0])


def test_validation_slice_is_fixed_and_disjoint_from_train():
    data = ImageSet(torch.zeros(200, 1, 2, 2, dtype=torch.uint8), torch.arange(200))
    torch.manual_seed(1)
    train, val = split_validation(data, 0.1)
    torch.manual_seed(2)
    train2, val2 = split_validation(data, 0.1)
    assert torch.equal(val.labels, val2.labels) and torch.equal(train.labels, train2.labels)
    assert len(val) == 20 and len(train) == 180
    assert set(train.labels.tolist()).isdisjoint(val.labels.tolist())
    assert sorted(train.labels.tolist() + val.labels.tolist()) == list(range(200))
    assert val.labels.tolist() != list(range(20))  # a random slice, not the head of the set


def test_validation_slice_is_capped():
    data = ImageSet(torch.zeros(60000, 1, 1, 1, dtype=torch.uint8), torch.arange(60000))
    train, val = split_validation(data)
    assert len(val) == 5000 and len(train) == 55000


# -- loaders on small files in the real formats ----------------------------------------------
def write_idx(path, array: np.ndarray, gz: bool = False) -> None:
    """An idx file (MNIST's format): magic with dtype 0x08 and ndim, big-endian dims, bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(payload)


def write_mnist_like(folder, n_train=30, n_test=10, gz=False):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
        made[prefix] = (torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))
    return made


def check_bundle(bundle, made_train, made_test, shape):
    assert bundle.input_shape == shape
    assert (len(bundle.train) + len(bundle.val), len(bundle.test)) == (len(made_train[1]), len(made_test[1]))
    got = rows(torch.cat([bundle.train.images, bundle.val.images]), torch.cat([bundle.train.labels, bundle.val.labels]))
    assert got == rows(*made_train)
    assert torch.equal(bundle.test.images, made_test[0]) and torch.equal(bundle.test.labels, made_test[1])


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_like_in_torchvisions_layout(tmp_path, monkeypatch, name, folder):
    monkeypatch.setenv("SDPRUNE_DATA", str(tmp_path / "cache"))
    made = write_mnist_like(tmp_path / "root" / folder / "raw")
    bundle = load_data(name, str(tmp_path / "root"))
    check_bundle(bundle, made["train"], made["t10k"], (1, 28, 28))
    assert len(bundle.classes) == 10
    assert bundle.augment == Augment(pad=2, flip=name == "fashion-mnist")
    assert not (tmp_path / "cache").exists()  # nothing staged: torchvision reads it in place


def test_fashion_mnist_from_bare_gz_files_as_debian_installs_them(tmp_path, monkeypatch):
    monkeypatch.setenv("SDPRUNE_DATA", str(tmp_path / "cache"))
    made = write_mnist_like(tmp_path / "debian", gz=True)
    bundle = load_data("fashion-mnist", str(tmp_path / "debian"))
    check_bundle(bundle, made["train"], made["t10k"], (1, 28, 28))
    assert bundle.classes[0] == "T-shirt/top"
    staged = tmp_path / "cache" / "fashion-mnist" / "staged" / "FashionMNIST" / "raw"
    assert (staged / "train-images-idx3-ubyte").is_file()
    assert not list(staged.glob("*.tmp"))
    again = load_data("fashion-mnist", str(tmp_path / "debian"))  # from the staged copy
    assert torch.equal(again.test.images, bundle.test.images)


def patch_md5(monkeypatch):
    # torchvision checks the md5 of the real CIFAR/SVHN files, which generated files cannot
    # match; keep its existence check and skip only the checksum.
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.svhn as svhn

    for module in (cifar, svhn):
        monkeypatch.setattr(module, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def write_cifar_batch(path, n, label_key, num_classes, rng):
    data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
    labels = rng.integers(0, num_classes, n).tolist()
    with open(path, "wb") as f:
        pickle.dump({"data": data, label_key: labels}, f)
    return torch.from_numpy(data.reshape(n, 3, 32, 32)), torch.tensor(labels)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_python_batches(tmp_path, monkeypatch, name):
    patch_md5(monkeypatch)
    ten = name == "cifar10"
    base = tmp_path / ("cifar-10-batches-py" if ten else "cifar-100-python")
    base.mkdir()
    k, key = (10, "labels") if ten else (100, "fine_labels")
    rng = np.random.default_rng(0)
    if ten:
        parts = [write_cifar_batch(base / f"data_batch_{i}", 6, key, k, rng) for i in range(1, 6)]
        train = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        test = write_cifar_batch(base / "test_batch", 7, key, k, rng)
        meta, meta_key = base / "batches.meta", "label_names"
    else:
        train = write_cifar_batch(base / "train", 25, key, k, rng)
        test = write_cifar_batch(base / "test", 7, key, k, rng)
        meta, meta_key = base / "meta", "fine_label_names"
    names = [f"c{i}" for i in range(k)]
    with open(meta, "wb") as f:
        pickle.dump({meta_key: names}, f)
    bundle = load_data(name, str(tmp_path))
    check_bundle(bundle, train, test, (3, 32, 32))
    assert bundle.classes == names and bundle.augment == Augment(pad=4, flip=True)


def test_svhn_mat_files(tmp_path, monkeypatch):
    from scipy.io import savemat

    patch_md5(monkeypatch)
    made, rng = {}, np.random.default_rng(0)
    for split, n in (("train", 20), ("test", 6)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # SVHN's (H, W, C, N)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)            # the digit 0 is labelled 10
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        made[split] = (torch.from_numpy(x).permute(3, 2, 0, 1).contiguous(), torch.from_numpy(y[:, 0] % 10).long())
    bundle = load_data("svhn", str(tmp_path))
    check_bundle(bundle, made["train"], made["test"], (3, 32, 32))
    assert bundle.augment == Augment(pad=4, flip=False)  # flipped digits are other digits


def test_imagefolder_of_png_files(tmp_path):
    from PIL import Image

    for split, n in (("train", 5), ("val", 2)):
        for c, cls in enumerate(("cat", "dog")):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = np.full((12, 10, 3), 40 + 150 * c, dtype=np.uint8)
                mode_img = Image.fromarray(pixels)
                if i == 0:
                    mode_img = mode_img.convert("L")  # a grey image among colour ones
                mode_img.save(tmp_path / split / cls / f"{i}.png")
    bundle = load_data("imagefolder", str(tmp_path), image_size=8)
    assert bundle.classes == ["cat", "dog"] and bundle.input_shape == (3, 8, 8)
    assert (len(bundle.train) + len(bundle.val), len(bundle.test)) == (10, 4)
    everything = ImageSet(torch.cat([bundle.train.images, bundle.val.images, bundle.test.images]),
                          torch.cat([bundle.train.labels, bundle.val.labels, bundle.test.labels]))
    for label, value in ((0, 40), (1, 190)):
        pixels = everything.images[everything.labels == label].float()
        assert pixels.mean().item() == pytest.approx(value, abs=3)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "cifar100", "svhn", "imagefolder"])
def test_missing_data_folder_is_a_clear_error(tmp_path, name):
    with pytest.raises(SdpruneError, match="does not exist"):
        load_data(name, str(tmp_path / "nowhere"))


@pytest.mark.parametrize("name", ["mnist", "cifar10", "svhn"])
def test_empty_data_folder_is_a_clear_error(tmp_path, monkeypatch, name):
    monkeypatch.setenv("SDPRUNE_DATA", str(tmp_path / "cache"))
    with pytest.raises(SdpruneError, match="cannot load .*--download"):
        load_data(name, str(tmp_path))


def test_imagefolder_needs_train_and_test(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(SdpruneError, match="train/ and test/"):
        load_data("imagefolder", str(tmp_path))
    with pytest.raises(SdpruneError, match="--data-dir"):
        load_data("imagefolder")
    with pytest.raises(SdpruneError, match="unknown dataset"):
        load_data("imagenet")


def test_data_for_checkpoint_keeps_the_checkpoints_normalisation():
    meta = {"data": {"dataset": "digits", "classes": [str(i) for i in range(10)], "input_shape": [1, 8, 8],
                     "mean": [0.25], "std": [0.5]}, "config": {}}
    bundle = data_for_checkpoint(meta)
    assert bundle.mean == [0.25] and bundle.std == [0.5] and len(bundle.test) == 359
    meta["data"]["input_shape"] = [1, 28, 28]
    with pytest.raises(SdpruneError, match="expects"):
        data_for_checkpoint(meta)
    meta["data"].update(input_shape=[1, 8, 8], classes=["a", "b"])
    with pytest.raises(SdpruneError, match="dataset digits has 10 classes, the model predicts 2"):
        data_for_checkpoint(meta)
