"""Streamed image folders (FolderSet): deterministic crops whatever the workers, sharding,
unreadable files, and load_data's choice between memory and stream."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sdprune.data.bundle import load_data
from sdprune.data.folder import FolderSet, decode_file, eval_resize_for, random_resized_crop
from sdprune.data.images import ImageSet, iterate_batches
from sdprune.data.scan import scan_folder
from sdprune.depth.gates import step_seed
from sdprune.errors import SdpruneError
from tests.data.folders import SIZE, batches, folder_set, make_folder, same, spoil


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("folder"))


def test_training_crops_depend_on_the_seed_alone_not_on_the_workers(folder, monkeypatch):
    data = folder_set(folder)
    state = torch.random.get_rng_state()
    reseeded = []  # a GPU's generators (Dropout's masks) must not follow the crops either
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: reseeded.append(seed))
    one = batches(data, crop_seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)  # the crops leave the global generator alone
    assert reseeded == []
    assert same(one, batches(data, crop_seed=7))
    assert same(one, batches(dataclasses.replace(data, workers=2), crop_seed=7))
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(3))
    assert [len(y) for _, y in one] == [8, 8, 8, 8, 4]
    assert torch.equal(torch.cat([y for _, y in one]), data.targets[order])
    images = torch.cat([x for x, _ in one])
    assert images.shape == (36, 3, SIZE, SIZE) and images.dtype == torch.uint8
    # Image p of the epoch's order is the RandomResizedCrop drawn from step_seed(crop_seed, p).
    for p in (0, 9, 35):
        path = data.paths[int(order[p])]
        assert torch.equal(images[p], random_resized_crop(decode_file(path), SIZE, step_seed(7, p)))
    other = torch.cat([x for x, _ in batches(data, crop_seed=8)])
    differs = [not torch.equal(a, b) for a, b in zip(images, other)]
    assert sum(differs) > 30  # another seed, other crops (the order is the same)
    assert not torch.equal(images, torch.cat([x for x, _ in batches(data)]))  # crops, not the eval view


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # more workers than this machine has cores
@pytest.mark.parametrize("images,workers", [(36, 2), (10, 8), (3, 8)])
def test_in_memory_spreads_a_small_set_over_every_worker(folder, monkeypatch, images, workers):
    data = dataclasses.replace(folder_set(folder).subset(torch.arange(images)), workers=workers)
    seen = []
    real = FolderSet.load_batches

    def spy(self, chunks, *args, **kwargs):
        seen.extend(len(c) for c in chunks)
        return real(self, chunks, *args, **kwargs)

    monkeypatch.setattr(FolderSet, "load_batches", spy)
    assert len(data.in_memory()) == len(data)
    assert len(seen) == min(images, workers) and sum(seen) == images  # one chunk each, none idle
    assert max(seen) - min(seen) <= 1


def test_eval_view_is_deterministic_and_is_torchvisions_resize_and_centre_crop(folder):
    from torchvision.transforms import v2

    data = folder_set(folder)
    images = data.in_memory().images
    assert images.shape == (len(data), 3, SIZE, SIZE) and images.dtype == torch.uint8
    assert torch.equal(images, data.in_memory().images)
    assert torch.equal(images, dataclasses.replace(data, workers=2).in_memory().images)
    assert torch.equal(images, torch.cat([x for x, _ in batches(data, order_seed=None, batch_size=5)]))
    assert eval_resize_for(SIZE) == 18 and eval_resize_for(224) == 256
    for resize in (None, 25):
        view = data.in_memory().images if resize is None else dataclasses.replace(data, resize=resize).in_memory().images
        reference = v2.Compose([v2.Resize(resize or 18, antialias=True), v2.CenterCrop(SIZE)])
        for i in (0, 1, 20):  # a JPEG, a PNG
            assert torch.equal(view[i], reference(decode_file(data.paths[i]))), (resize, data.paths[i])
    # PNG is lossless: decode_file gives exactly the file's pixels, channels first.
    from PIL import Image

    png = next(p for p in data.paths if p.endswith(".png"))
    assert torch.equal(decode_file(png), torch.from_numpy(np.array(Image.open(png).convert("RGB"))).permute(2, 0, 1))


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_shards_put_together_are_the_whole_batch_crops_included(folder, world, drop_last):
    data = folder_set(folder)
    whole = batches(data, crop_seed=11, batch_size=10, drop_last=drop_last)
    shards = [batches(data, crop_seed=11, batch_size=10, drop_last=drop_last, shard=(r, world))
              for r in range(world)]
    assert len(whole) == (3 if drop_last else 4)
    assert all(len(s) == len(whole) for s in shards)
    for b, (images, labels) in enumerate(whole):
        parts = [s[b] for s in shards]
        assert [len(y) for _, y in parts] == [len(t) for t in torch.arange(len(labels)).tensor_split(world)]
        assert torch.equal(torch.cat([x for x, _ in parts]), images), b
        assert torch.equal(torch.cat([y for _, y in parts]), labels), b


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_file_fails_in_one_line_naming_it(tmp_path, workers):
    root = make_folder(tmp_path, n_train=2, n_test=1)
    bad = spoil(root)
    data = folder_set(root, workers=workers)
    for path in bad:  # each on its own, among good files
        alone = data.subset(torch.tensor([i for i, p in enumerate(data.paths) if p not in bad or p == path]))
        with pytest.raises(SdpruneError) as err:
            batches(alone, crop_seed=1, batch_size=3)
        message = str(err.value)
        assert path in message and "\n" not in message and "--bad-images skip" in message
        with pytest.raises(SdpruneError, match="not a readable image"):
            alone.in_memory().images


def test_skip_mode_trains_on_the_next_readable_file_and_evaluates_the_readable_ones(tmp_path):
    root = make_folder(tmp_path, n_train=4, n_test=1)
    bad = spoil(root)
    data = folder_set(root, bad_images="skip", workers=2)
    assert len(data) == 14
    got = batches(data, crop_seed=1, batch_size=4)
    # training batches keep their size (every step, and every rank under torchrun, trains)
    assert [len(y) for _, y in got] == [4, 4, 4, 2] and all(x.shape[1:] == (3, SIZE, SIZE) for x, _ in got)
    assert sorted(data.skipped) == sorted(bad)
    good = [i for i, p in enumerate(data.paths) if p not in bad]
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(3))
    standing_in = [next(j % len(data) for j in range(i, i + len(data)) if j % len(data) in good)
                   for i in order.tolist()]
    assert torch.equal(torch.cat([y for _, y in got]), data.targets[standing_in])
    fresh = folder_set(root, bad_images="skip")
    assert torch.equal(fresh.in_memory().images, folder_set(root).subset(torch.tensor(good)).in_memory().images)
    assert sorted(fresh.skipped) == sorted(bad)


def test_auto_decodes_a_small_folder_into_memory_and_streams_a_large_one(folder):
    memory = load_data("imagefolder", str(folder), image_size=SIZE)
    assert isinstance(memory.train, ImageSet) and isinstance(memory.test, ImageSet)
    streamed = load_data("imagefolder", str(folder), image_size=SIZE, eval_resize=20, bad_images="skip",
                         memory_budget=1000)
    assert all(isinstance(s, FolderSet) for s in (streamed.train, streamed.val, streamed.test))
    assert (streamed.train.resize, streamed.train.bad_images, streamed.test.resize) == (20, "skip", 20)
    assert (len(streamed.train), len(streamed.val), len(streamed.test)) == (32, 4, 9)
    # The same validation slice in both modes: the same files, in the same order.
    assert torch.equal(streamed.val.labels, memory.val.labels)
    assert torch.equal(streamed.train.labels, memory.train.labels)
    assert streamed.input_shape == memory.input_shape == (3, SIZE, SIZE)
    meta = streamed.meta()
    assert meta["dataset"] == "imagefolder" and meta["classes"] == ["ant", "bee", "cat"]
    assert meta["input_shape"] == [3, SIZE, SIZE] and len(meta["mean"]) == len(meta["std"]) == 3
    assert streamed.mean == pytest.approx(memory.mean, abs=0.02)  # one brightness per class: views agree
    assert streamed.augment.flip


def test_streamed_evaluation_images_are_the_in_memory_ones_at_the_same_resize(folder):
    memory = load_data("imagefolder", str(folder), image_size=SIZE, data_mode="memory")
    streamed = load_data("imagefolder", str(folder), image_size=SIZE, data_mode="stream", eval_resize=SIZE)
    for split in ("val", "test"):
        a, b = getattr(memory, split), getattr(streamed, split).in_memory()
        assert torch.equal(a.labels, b.labels) and torch.equal(a.images, b.images), split
    assert memory.mean == streamed.mean  # the same images measured: a small folder's sample is all of it
    assert (memory.meta()["mode"], memory.meta()["resize"]) == ("memory", SIZE)
    assert (streamed.meta()["mode"], streamed.meta()["resize"]) == ("stream", SIZE)


def test_a_checkpoint_reads_its_folder_as_the_run_did(folder):
    from sdprune.data.bundle import data_for_checkpoint

    streamed = load_data("imagefolder", str(folder), image_size=SIZE, data_mode="stream")
    assert streamed.meta()["resize"] == eval_resize_for(SIZE)
    meta = {"data": {**streamed.meta(), "mean": [0.5] * 3, "std": [0.25] * 3},
            "config": {"data_dir": str(folder), "data_mode": "auto"}}  # auto would now pick memory
    again = data_for_checkpoint(meta)
    assert isinstance(again.test, FolderSet) and again.test.resize == eval_resize_for(SIZE)
    assert (again.mean, again.std) == ([0.5] * 3, [0.25] * 3)  # the checkpoint's, not measured again


def test_a_checkpoint_keeps_its_recorded_mode_and_old_ones_read_as_they_were_written(tmp_path):
    from sdprune.data.bundle import data_for_checkpoint

    root = make_folder(tmp_path, n_train=3, n_test=1, gray=True)
    base = {"dataset": "imagefolder", "classes": ["ant", "bee", "cat"], "mean": [0.5] * 3, "std": [0.25] * 3}
    config = {"data_dir": str(root), "data_mode": "stream"}  # the flag said stream; the run recorded memory
    memory = data_for_checkpoint({"data": {**base, "input_shape": [3, SIZE, SIZE], "mode": "memory",
                                           "resize": SIZE}, "config": config})
    assert isinstance(memory.test, ImageSet) and memory.meta()["mode"] == "memory"
    # written before the view was recorded: in memory at its size, 3 channels even for gray files
    old = data_for_checkpoint({"data": {**base, "input_shape": [3, SIZE, SIZE]}, "config": {"data_dir": str(root)}})
    assert isinstance(old.test, ImageSet) and old.input_shape == (3, SIZE, SIZE)
    assert (old.meta()["mode"], old.meta()["resize"]) == ("memory", SIZE)


def test_stream_mode_val_is_a_slice_of_train_that_does_not_overlap_it(folder):
    data = load_data("imagefolder", str(folder), image_size=SIZE, data_mode="stream")
    train, val = data.train, data.val
    assert isinstance(val, FolderSet) and (val.size, val.channels) == (train.size, train.channels)
    assert not set(train.paths) & set(val.paths)
    all_train, targets, _ = scan_folder(str(folder / "train"))
    assert sorted(train.paths + val.paths) == sorted(all_train)
    labels = dict(zip(all_train, targets.tolist()))
    assert [labels[p] for p in val.paths] == val.labels.tolist()
    assert val.paths == sorted(val.paths, key=all_train.index)  # the slice keeps the folder's order
    assert len({labels[p] for p in val.paths}) > 1  # seeded random, not the first class's files
    assert not set(data.test.paths) & set(all_train)


@pytest.mark.parametrize("mode", ["stream", "memory"])
def test_a_grayscale_folder_has_one_channel_in_either_mode(tmp_path, mode):
    """Checkpoints must not depend on the data mode: both probe the files the same way."""
    root = make_folder(tmp_path, n_train=3, n_test=1, gray=True)
    data = load_data("imagefolder", str(root), image_size=SIZE, data_mode=mode)
    assert data.input_shape == (1, SIZE, SIZE) and data.meta()["input_shape"] == [1, SIZE, SIZE]
    assert len(data.mean) == len(data.std) == 1
    assert data.test.in_memory().images.shape == (3, 1, SIZE, SIZE)
    x, _ = next(iter(iterate_batches(data.train, 4, crop_seed=0)))
    assert x.shape == (4, 1, SIZE, SIZE)


def test_memory_mode_skips_unreadable_files_keeping_images_and_labels_aligned(tmp_path):
    root = make_folder(tmp_path, n_train=4, n_test=1)
    bad = spoil(root)
    with pytest.raises(SdpruneError, match="not a readable image"):
        load_data("imagefolder", str(root), image_size=SIZE, data_mode="memory")
    data = load_data("imagefolder", str(root), image_size=SIZE, data_mode="memory", bad_images="skip")
    assert sorted(data.skipped) == sorted(bad)
    assert len(data.train) + len(data.val) == 12
    paths, targets, _ = scan_folder(str(root / "train"))
    good = [i for i, p in enumerate(paths) if p not in bad]
    whole = torch.cat([data.train.labels, data.val.labels]).sort().values
    assert torch.equal(whole, targets[good].sort().values)
    # the eval view at the training size: exactly what a stream of the same files decodes
    streamed = FolderSet([paths[i] for i in good], targets[good], SIZE, resize=SIZE).in_memory()
    decoded = {(x.numpy().tobytes(), int(y)) for x, y in zip(streamed.images, streamed.labels)}
    kept = {(x.numpy().tobytes(), int(y)) for x, y in zip(torch.cat([data.train.images, data.val.images]),
                                                          torch.cat([data.train.labels, data.val.labels]))}
    assert kept == decoded


def test_a_training_batch_with_nothing_readable_is_one_clear_error(tmp_path):
    root = make_folder(tmp_path, n_train=2, n_test=1)
    bad = spoil(root)
    data = FolderSet(bad, torch.tensor([0, 1]), SIZE, bad_images="skip")
    with pytest.raises(SdpruneError, match="no readable image among 2 files in a row from .*corrupt.jpg: nothing to train on"):
        batches(data, crop_seed=1, batch_size=2)
    assert data.in_memory().images.shape == (0, 3, SIZE, SIZE)  # evaluation: nothing to evaluate, no error


def test_stream_mode_is_for_image_folders_only(folder):
    with pytest.raises(SdpruneError, match="--data-mode stream reads image folders; digits"):
        load_data("digits", data_mode="stream")
    with pytest.raises(SdpruneError, match="--data-mode must be"):
        load_data("imagefolder", str(folder), data_mode="disk")
    with pytest.raises(SdpruneError, match="--bad-images must be"):
        load_data("imagefolder", str(folder), data_mode="stream", bad_images="ignore")
