"""Decoding an image folder's files: every kind of file to uint8 with the folder's channels,
no warnings, the channel probe, decompression bombs, names in any encoding, and the listing
torchvision's ImageFolder makes, links included."""

from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np
import pytest
import torch

from sdprune.data.bundle import load_data
from sdprune.data.folder import FolderSet, decode_file, probe_channels
from sdprune.data.images import iterate_batches
from sdprune.data.scan import scan_folder
from sdprune.errors import SdpruneError
from tests.data.folders import SIZE, batches, make_folder


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
