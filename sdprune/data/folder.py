"""Image folders that stream: files decoded by DataLoader workers, a batch at a time.

An ``ImageSet`` holds every image in memory; a ``FolderSet`` holds only paths and labels,
so its memory is bounded whatever the folder's size (ImageNet at 224 px would need ~190 GB
decoded). Batches are decoded by ``torch.utils.data.DataLoader`` worker processes with
Pillow, pinned and prefetched, in the standard large-image recipe:
RandomResizedCrop for training, resize + centre crop for evaluation (the flip is done on
the device by the training step, like the in-memory sets' augmentation).

Determinism: the crop of every image comes from its own seed, which the caller derives
from (seed, epoch, position in the epoch's order), so which worker decodes an image, and
how many workers there are, never changes a pixel: a resumed run stays exact.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from sdprune.data.images import ImageSet, seeded_index
from sdprune.data.scan import scan_folder
from sdprune.errors import SdpruneError

CROP_SCALE = (0.08, 1.0)            # RandomResizedCrop's area fraction (torchvision's default)
CROP_RATIO = (3 / 4, 4 / 3)         # and aspect ratio
EVAL_CROP_FRACTION = 0.875          # resize to size / 0.875, centre-crop size (224 <- 256)
PREFETCH_BATCHES = 2                # per worker
SUBSTITUTE_TRIES = 64               # skip mode: files tried after an unreadable training image
# ``in_memory`` decodes in chunks of about this many bytes of pixels, spread over the workers.
# Each chunk crosses from a worker in one shared-memory handle: with chunks of 64 32-px CIFAR
# images, passing the handles, not decoding, took a third of the time. A set too small to give
# every worker a chunk of DECODE_MIN_IMAGES is split evenly over the workers instead.
DECODE_BYTES = 4 << 20
DECODE_MIN_IMAGES, DECODE_MAX_IMAGES = 64, 1024
# PIL modes of grayscale files (with or without alpha, 8 to 32 bits); a palette ("P") is colour
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def eval_resize_for(size: int) -> int:
    """The side an evaluation image is resized to before its centre crop of ``size``."""
    return int(round(size / EVAL_CROP_FRACTION))


@dataclass
class FolderSet:
    """Labelled image files, decoded on demand to uint8 (C, size, size)."""
    paths: list[str]
    targets: Tensor                  # int64 (N,)
    size: int                        # side of the images batches deliver, pixels
    channels: int = 3                # 1: decode as grayscale
    resize: int | None = None        # evaluation resize side (None: size / 0.875)
    bad_images: str = "fail"         # an unreadable file fails the run, or is skipped and counted
    workers: int = 0                 # DataLoader worker processes (0: decode in this process)
    pin_memory: bool = False         # for a CUDA device
    # unreadable files met so far by this set (skip mode): path -> reason, each file once
    skipped: dict[str, str] = field(default_factory=dict)
    _packed: "np.ndarray | None" = field(default=None, init=False, repr=False, compare=False)

    def packed_paths(self) -> "np.ndarray":
        """The paths as one fixed-width bytes array, built once: what the decoding workers read.

        A forked worker that read a Python list of str would touch each string's reference
        count and so copy its memory page by page (ImageNet: ~150 MB a worker, times the
        workers and the processes); one numpy buffer stays shared.
        """
        if self._packed is None:
            self._packed = np.asarray([os.fsencode(p) for p in self.paths], dtype=bytes)  # any file name
        return self._packed

    @property
    def labels(self) -> Tensor:
        return self.targets

    def in_memory(self) -> ImageSet:
        """The readable files decoded once (the evaluation view) with their labels, as an ImageSet.

        Images and labels come from the same decoded batches, so they stay aligned when
        unreadable files are skipped. Filled into one preallocated tensor a batch at a time:
        peak memory is the decoded set plus the batches in flight (``PREFETCH_BATCHES`` a worker).
        """
        images = torch.empty(len(self), *self.input_shape, dtype=torch.uint8)
        labels = torch.empty(len(self), dtype=torch.long)
        filled = 0
        chunk = min(max(DECODE_BYTES // math.prod(self.input_shape), DECODE_MIN_IMAGES), DECODE_MAX_IMAGES)
        count = max(math.ceil(len(self) / chunk), min(len(self), self.workers))
        chunks = torch.arange(len(self)).tensor_split(count) if len(self) else ()
        for batch, batch_labels in self.load_batches(chunks):
            images[filled:filled + len(batch)] = batch
            labels[filled:filled + len(batch)] = batch_labels
            filled += len(batch)
        return ImageSet(images[:filled], labels[:filled])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: Tensor) -> "FolderSet":
        return replace(self, paths=[self.paths[i] for i in index.tolist()], targets=self.targets[index],
                       skipped={})

    def sample(self, n: int | None, seed: int = 0) -> "FolderSet":
        """A seeded random subset of ``n`` files in their original order (``ImageSet.sample``)."""
        if n is not None and n < 1:
            raise SdpruneError(f"a sample needs at least 1 image, got {n}")
        return self if n is None or n >= len(self) else self.subset(seeded_index(len(self), n, seed))

    def load_batches(self, chunks: Sequence[Tensor], crop_seeds: Sequence[Tensor] | None = None,
                     ) -> Iterator[tuple[Tensor, Tensor]]:
        """Decode the batches of ``chunks`` (index tensors) in order, in worker processes.

        With ``crop_seeds`` (one int64 seed per image of each chunk) images get a
        RandomResizedCrop drawn from their seed; without, the evaluation resize + crop.
        Unreadable files raise (``bad_images`` "fail") or are recorded in ``skipped``; in
        skip mode a training batch keeps its size (see ``_Decoder``), an evaluation batch
        loses them, and a batch with nothing readable is not yielded.
        """
        if crop_seeds is None:
            items = [[(i, None) for i in chunk.tolist()] for chunk in chunks]
        else:
            items = [list(zip(chunk.tolist(), seeds.tolist())) for chunk, seeds in zip(chunks, crop_seeds)]
        # A generator of its own: a DataLoader draws its workers' base seed from the one it is
        # given, by default the global one, which iterating a folder must leave alone (an
        # ImageSet does); the crops come from their seeds, not from the workers' generators.
        loader = torch.utils.data.DataLoader(
            _Decoder(self), batch_sampler=items, num_workers=self.workers, collate_fn=_collate,
            pin_memory=self.pin_memory, prefetch_factor=PREFETCH_BATCHES if self.workers > 0 else None,
            generator=torch.Generator())
        for (images, labels, bad), chunk in zip(loader, items):
            for path, reason in bad:
                if self.bad_images == "fail":
                    raise SdpruneError(f"{path} is not a readable image ({reason}); remove or replace it, "
                                       "or pass --bad-images skip")
                self.skipped.setdefault(path, reason)
            if crop_seeds is not None and len(labels) < len(chunk):
                raise SdpruneError(f"no readable image among {min(SUBSTITUTE_TRIES, len(self))} files in a row "
                                   f"from {bad[0][0]}: nothing to train on in its place; check the folder")
            if len(labels):
                yield images, labels


class _Decoder(torch.utils.data.Dataset):
    """(index, crop seed or None) -> (uint8 image or None, label, [(path, reason) of bad files]).

    A bad file comes back as data, not as an exception: raised inside a worker it would
    reach the user as a multi-line traceback of the worker. In skip mode a training image
    (one with a crop seed) that cannot be read is replaced by the next readable file of
    the folder: every batch keeps its size, so no step is lost and, under torchrun, every
    rank still takes every step (a rank whose rows were all unreadable would otherwise
    leave the others waiting in a collective). Evaluation images are dropped instead.
    """

    def __init__(self, folder: FolderSet) -> None:
        self.paths = folder.packed_paths()      # no Python object per file (see packed_paths)
        self.targets = folder.targets.numpy()
        self.size, self.channels = folder.size, folder.channels
        self.resize = folder.resize or eval_resize_for(folder.size)
        self.skip = folder.bad_images == "skip"

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int | None]):
        index, seed = item
        bad: list[tuple[str, str]] = []
        for attempt in range(min(SUBSTITUTE_TRIES, len(self)) if seed is not None and self.skip else 1):
            i = (index + attempt) % len(self)
            path = os.fsdecode(self.paths[i])
            try:
                image = decode_file(path, self.channels)
            except (OSError, ValueError, RuntimeError, SyntaxError) as err:
                bad.append((path, (str(err).strip().splitlines() or [type(err).__name__])[0][:200]))
                continue
            if seed is None:
                image = eval_view(image, self.size, self.resize)
            else:
                image = random_resized_crop(image, self.size, seed)
            return image, int(self.targets[i]), bad
        return None, -1, bad


def _collate(items: list) -> tuple[Tensor, Tensor, list[tuple[str, str]]]:
    """Stack a batch's readable images and labels; collect its unreadable files.

    ``default_collate`` stacks straight into shared memory inside a worker, sparing the
    copy the trip to the main process would otherwise make.
    """
    from torch.utils.data import default_collate

    good = [(x, y) for x, y, _ in items if x is not None]
    bad = [entry for _, _, entries in items for entry in entries]
    if not good:
        return torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), bad
    images, labels = default_collate(good)
    return images, labels, bad


def decode_file(path: str, channels: int = 3) -> Tensor:
    """A file's pixels as uint8 (channels, H, W), decoded by Pillow: every format it reads (JPEG,
    PNG, GIF, WebP, BMP, TIFF ...), the first frame of an animation, 16-bit gray scaled to 8 bits
    (the top byte; Pillow's own conversion would clip at 255), a palette expanded to colour.

    Colour comes back as a view of Pillow's (H, W, C) pixels: the crops read it as fast as
    a contiguous copy (which would cost more than the decode on a large photo) and return
    contiguous tensors.
    """
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as img:
            if img.mode.startswith("I;16") or (img.mode == "I" and img.format == "PNG"):  # older Pillow: "I"
                img = Image.fromarray((np.asarray(img) >> 8).astype(np.uint8))
            pixels = np.array(img if img.mode == mode else img.convert(mode))
    except Image.DecompressionBombError as err:  # not an OSError: it would escape the bad-file check
        raise ValueError(str(err)) from None
    image = torch.from_numpy(pixels)
    return image[None] if image.ndim == 2 else image.permute(2, 0, 1)


def random_resized_crop(image: Tensor, size: int, seed: int) -> Tensor:
    """torchvision's RandomResizedCrop, its parameters drawn from ``seed`` alone."""
    from torchvision.transforms import RandomResizedCrop
    from torchvision.transforms.v2.functional import resized_crop

    # get_params draws from the global CPU generator: seed it alone for the draw and put it
    # back (torch.manual_seed would also reseed every CUDA generator, e.g. Dropout's).
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        top, left, h, w = RandomResizedCrop.get_params(image, list(CROP_SCALE), list(CROP_RATIO))
    return resized_crop(image, top, left, h, w, [size, size], antialias=True).contiguous()


def eval_view(image: Tensor, size: int, resize: int) -> Tensor:
    """Resize the short side to ``resize``, then the centre ``size`` x ``size`` crop."""
    from torchvision.transforms.v2.functional import center_crop, resize as resize_image

    return center_crop(resize_image(image, [resize], antialias=True), [size, size]).contiguous()


def open_folder(root: Path, size: int, workers: int = 0, bad_images: str = "fail",
                eval_resize: int | None = None, pin_memory: bool = False, channels: int | None = None,
                ) -> tuple[FolderSet, FolderSet, list[str]]:
    """ROOT/train and ROOT/test (or ROOT/val) as FolderSets, and the class names.

    Both splits decode to ``channels`` channels, by default 1 when the probed files are all
    grayscale, else 3 (``probe_channels``), whether the run streams or holds them in memory.
    """
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise SdpruneError(f"{root} must hold train/ and test/ (or val/), one subfolder per class")
    train_paths, train_labels, classes = scan_folder(str(root / "train"))
    test_paths, test_labels, test_classes = scan_folder(str(test_dir))
    if len(classes) < 2:  # one class: every prediction would be right, and nothing learned
        raise SdpruneError(f"{root / 'train'} has {len(classes)} class folder ({classes[0]}); "
                           "a classifier needs at least 2 classes")
    if test_classes != classes:
        raise SdpruneError(f"{root}: train/ and {test_dir.name}/ have different class folders")
    channels = channels or probe_channels(train_paths)
    return (FolderSet(train_paths, train_labels, size, channels, eval_resize, bad_images, workers, pin_memory),
            FolderSet(test_paths, test_labels, size, channels, eval_resize, bad_images, workers, pin_memory),
            classes)


def probe_channels(paths: Sequence[str], count: int = 16) -> int:
    """1 when the readable files of a seeded random ``count`` of a folder are all grayscale, else 3.

    Random, not the first files: a folder is sorted by class, and one class of grayscale
    scans must not make the others gray. PIL reads only the files' headers, and tells a
    palette (one channel of indices into colours) from gray.
    """
    from PIL import Image

    seen = []
    for i in seeded_index(len(paths), min(count, len(paths)), 0).tolist():
        try:
            with Image.open(paths[i]) as img:
                seen.append(img.mode)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue
    return 1 if seen and all(mode in GRAY_MODES for mode in seen) else 3
