"""Streamed image folders (FolderSet): deterministic crops whatever the workers, sharding,
unreadable files, and load_data's choice between memory and stream."""

from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np
import pytest
import torch

from sdprune.data.bundle import load_data
from sdprune.data.folder import FolderSet, decode_file, eval_resize_for, random_resized_crop, scan_folder
from sdprune.data.images import ImageSet, iterate_batches
from sdprune.depth.gates import step_seed
from sdprune.errors import SdpruneError

SIZE = 16


def make_folder(root, classes=("ant", "bee", "cat"), n_train=12, n_test=3, gray=False, seed=0):
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


def spoil(root):
    """Add two unreadable files to ROOT/train: random bytes named .jpg, and a truncated PNG."""
    corrupt = root / "train" / "ant" / "corrupt.jpg"
    corrupt.write_bytes(np.random.default_rng(1).integers(0, 256, 600, dtype=np.uint8).tobytes())
    good = (root / "train" / "bee" / "1.png").read_bytes()
    truncated = root / "train" / "bee" / "truncated.png"
    truncated.write_bytes(good[:len(good) // 2])
    return [str(corrupt), str(truncated)]


def folder_set(root, **kw) -> FolderSet:
    paths, targets, _ = scan_folder(str(root / "train"))
    return FolderSet(paths, targets, SIZE, **kw)


def batches(data, crop_seed=None, batch_size=8, order_seed=3, **kw):
    generator = torch.Generator().manual_seed(order_seed) if order_seed is not None else None
    return list(iterate_batches(data, batch_size, generator, crop_seed=crop_seed, **kw))


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(a, b))


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


def write_kinds(root) -> dict[str, str]:
    """One small file of each kind an image folder may hold, named by kind."""
    from PIL import Image

    rng = np.random.default_rng(2)
    rgb = Image.fromarray(rng.integers(0, 256, (21, 27, 3), dtype=np.uint8))
    frames = [Image.fromarray(rng.integers(0, 256, (21, 27, 3), dtype=np.uint8)) for _ in range(3)]
    made = {"palette png": ("palette.png", rgb.convert("P")), "rgba png": ("rgba.png", rgb.convert("RGBA")),
            "gray-alpha png": ("la.png", rgb.convert("LA")), "cmyk jpeg": ("cmyk.jpg", rgb.convert("CMYK")),
            "bmp": ("x.bmp", rgb), "tiff": ("x.tif", rgb), "gif": ("x.gif", rgb), "webp": ("x.webp", rgb),
            "16-bit png": ("i16.png", Image.fromarray(rng.integers(0, 65535, (21, 27)).astype(np.uint16)))}
    paths = {}
    for kind, (name, image) in made.items():
        image.save(root / name)
        paths[kind] = str(root / name)
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    paths["animated gif"] = str(root / "anim.gif")
    return paths


@pytest.mark.parametrize("channels", [1, 3])
def test_every_kind_of_file_decodes_to_uint8_with_the_folders_channels(tmp_path, channels):
    """A palette, alpha, CMYK, every frame of a GIF, 16-bit pixels, colour asked for in gray:
    a batch mixing them must still stack."""
    paths = write_kinds(tmp_path)
    for kind, path in paths.items():
        image = decode_file(path, channels)
        assert (image.dtype, tuple(image.shape)) == (torch.uint8, (channels, 21, 27)), kind
    assert decode_file(paths["16-bit png"], channels).float().std() > 30  # scaled to 8 bits, not clipped to 255
    data = FolderSet(list(paths.values()), torch.zeros(len(paths), dtype=torch.long), SIZE, channels)
    (crops, _), = iterate_batches(data, len(paths), crop_seed=0)
    assert crops.shape == (len(paths), channels, SIZE, SIZE) and crops.dtype == torch.uint8
    assert data.in_memory().images.shape == (len(paths), channels, SIZE, SIZE) and data.skipped == {}


def test_decoding_raises_no_warning(tmp_path):
    """Every kind of file, as training crops and as the evaluation view, and a folder through
    load_data, with every warning an error. A library's deprecation names its own module, not
    the caller (torchvision 0.29's decoders did, once per file), so the suite's filter on
    sdprune's modules would let it through: this test would not."""
    (tmp_path / "kinds").mkdir()
    paths = write_kinds(tmp_path / "kinds")
    root = make_folder(tmp_path / "folder", n_train=4, n_test=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for channels in (1, 3):
            data = FolderSet(list(paths.values()), torch.zeros(len(paths), dtype=torch.long), SIZE, channels)
            crops = sum(len(x) for x, _ in batches(data, crop_seed=0))
            assert len(data.in_memory()) == len(paths) == crops
        assert len(load_data("imagefolder", str(root), image_size=SIZE, data_mode="memory").train) > 0
        streamed = load_data("imagefolder", str(root), image_size=SIZE, data_mode="stream")
        assert len(batches(streamed.train, crop_seed=0)) > 0 and len(batches(streamed.test)) > 0


def test_the_channel_probe_tells_gray_files_from_colour_ones(tmp_path):
    from sdprune.data.folder import probe_channels

    paths = write_kinds(tmp_path)
    assert probe_channels([paths["palette png"]]) == 3  # one channel of indices into a colour palette
    assert probe_channels([paths["gray-alpha png"], paths["16-bit png"]]) == 1
    assert probe_channels([paths[k] for k in ("cmyk jpeg", "bmp", "tiff", "webp", "rgba png")]) == 3
    assert probe_channels([str(tmp_path / "missing.png")]) == 3


def test_a_folder_whose_first_class_is_gray_is_still_colour(tmp_path):
    from PIL import Image

    root = make_folder(tmp_path, classes=("bee", "cat"), n_train=3, n_test=1)
    (root / "train" / "ant").mkdir()  # the first class: 20 grayscale scans, more than the probe reads
    (root / "test" / "ant").mkdir()
    for i in range(20):
        Image.new("L", (20, 24), 10 * i).save(root / "train" / "ant" / f"{i}.png")
    Image.new("L", (20, 24), 0).save(root / "test" / "ant" / "0.png")
    data = load_data("imagefolder", str(root), image_size=SIZE, data_mode="stream")
    assert data.classes == ["ant", "bee", "cat"] and data.input_shape == (3, SIZE, SIZE)


def test_a_decompression_bomb_is_an_unreadable_file_not_a_crash(tmp_path, monkeypatch):
    from PIL import Image

    paths = write_kinds(tmp_path)
    Image.new("RGB", (10, 10)).save(tmp_path / "small.gif")  # 100 pixels: at the limit, not over it
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 21 x 27 is over twice this: PIL refuses the BMP
    data = FolderSet([paths["bmp"], str(tmp_path / "small.gif")], torch.tensor([0, 1]), SIZE)
    with pytest.raises(SdpruneError, match="x.bmp is not a readable image .*decompression bomb"):
        data.in_memory().images
    skipping = dataclasses.replace(data, bad_images="skip", skipped={})
    assert skipping.in_memory().images.shape == (1, 3, SIZE, SIZE) and list(skipping.skipped) == [paths["bmp"]]


def test_file_names_in_any_encoding_are_read(tmp_path):
    """The workers read paths from one bytes array (no Python string per file): a name that is
    not valid UTF-8 must survive the round trip."""
    from PIL import Image

    paths = []
    for name in (b"caf\xc3\xa9.png", b"odd\xffname.png"):
        path = os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), name))
        Image.fromarray(np.full((10, 12, 3), 7 * len(paths), np.uint8)).save(path)
        paths.append(path)
    data = FolderSet(paths, torch.tensor([0, 1]), SIZE, workers=1)
    decoded = data.in_memory()
    assert decoded.images.shape == (2, 3, SIZE, SIZE) and decoded.labels.tolist() == [0, 1]
    assert int(decoded.images[1].max()) == 7


def test_a_folder_is_listed_as_torchvision_lists_it_links_included(tmp_path):
    """Nested folders, names that sort around '/', a linked folder outside and a dangling link:
    the same files, labels and order as torchvision's make_dataset (validation slices stay put)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    root, outside = tmp_path / "train", tmp_path / "outside"
    for name in ("a/1.png", "a/2.JPG", "a/notes.txt", "b/0.png", "b/x/1.png", "b/x-y/2.png", "b/x/z/3.png",
                 "c/9.webp", "../outside/e1.png", "../outside/sub/e2.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    os.symlink(outside, root / "c" / "ext")
    os.symlink(tmp_path / "nowhere.png", root / "a" / "dangling.png")
    classes, index = find_classes(str(root))
    paths, targets, names = scan_folder(str(root))
    assert list(zip(paths, targets.tolist())) == make_dataset(str(root), index, extensions=IMG_EXTENSIONS)
    assert names == classes and len(paths) == 10
