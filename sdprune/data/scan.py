"""Listing an image folder: ROOT/<class>/<image>, every file once.

The rules and the order are torchvision's ``ImageFolder`` (class folders sorted, files
with an image extension, sub-folders walked with symbolic links followed, the walk
sorted by folder path), so labels and the validation slice are what they always were.
What torchvision's walk does not do is notice a folder it has already read: a link back
up the tree (``train/a/self -> .``) is walked again and again until the path grows too
long (some 40 times), and a second link to a folder, or a link to a file, reads the same
images twice, so copies land in the training set and in the validation slice. sdprune
refuses both, naming the link: a folder reached twice is a cycle or a duplicate, and an
image reached twice through a link is a duplicate. (Two hard links to one file, with no
symbolic link involved, are two names the user gave on purpose, and are kept.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS  # lower case: a name's extension is lowered to match

from sdprune.errors import SdpruneError


@dataclass
class _File:
    path: str
    label: int
    linked: bool  # reached through a symbolic link (the file itself, or a folder above it)


def scan_folder(root: str) -> tuple[list[str], Tensor, list[str]]:
    """Paths, labels and class names of ROOT/<class>/<image> (torchvision's ImageFolder rules
    and order); a symbolic link cycle, or an image or folder reached twice, is refused."""
    try:
        classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    except OSError as err:
        raise SdpruneError(f"cannot read image folder {root}: {err.strerror or type(err).__name__}") from None
    if not classes:
        raise SdpruneError(f"cannot read image folder {root}: it holds no class folders")
    seen: dict[tuple[int, int], str] = {}  # every folder read, by (device, inode)
    files: list[_File] = []
    for label, name in enumerate(classes):
        top = os.path.join(root, name)
        found = list(_walk(top, os.path.islink(top), seen))
        count = len(files)
        for folder, names, linked in sorted(found, key=lambda item: item[0]):  # torchvision sorts the walk
            files += [_File(os.path.join(folder, n), label, linked or is_link)
                      for n, is_link in sorted(names) if n.lower().endswith(IMG_EXTENSIONS)]
        if len(files) == count:
            raise SdpruneError(f"cannot read image folder {root}: class folder {name} holds no image files "
                               f"({', '.join(IMG_EXTENSIONS)})")
    _refuse_duplicates(files)
    return [f.path for f in files], torch.tensor([f.label for f in files], dtype=torch.long), classes


def _walk(folder: str, linked: bool, seen: dict[tuple[int, int], str]):
    """(folder, [(file name, is a link)], reached through a link) for ``folder`` and every folder
    below it, symbolic links followed; a folder met twice is one clear error."""
    try:
        info = os.stat(folder)
        entries = list(os.scandir(folder))
    except OSError as err:
        raise SdpruneError(f"cannot read image folder {folder}: {err.strerror or type(err).__name__}") from None
    key = (info.st_dev, info.st_ino)
    if key in seen:
        raise SdpruneError(f"{seen[key]} and {folder} are one folder, reached twice through a symbolic link "
                           "(a link cycle, or two links to one folder); sdprune reads every image once: "
                           "remove the link")
    seen[key] = folder
    names, below = [], []
    for entry in entries:
        try:
            is_dir = entry.is_dir()  # follows links, as torchvision's walk does
        except OSError:
            is_dir = False
        (below if is_dir else names).append(entry)
    yield folder, [(e.name, e.is_symlink()) for e in names], linked
    for entry in below:
        yield from _walk(entry.path, linked or entry.is_symlink(), seen)


def _refuse_duplicates(files: list[_File]) -> None:
    """Refuse an image file reached twice where a symbolic link is involved. Costs a stat per
    file only when some file was reached through a link (a folder without links costs nothing)."""
    if not any(f.linked for f in files):
        return
    first: dict[tuple[int, int], _File] = {}
    for f in files:
        try:
            info = os.stat(f.path)
        except OSError:
            continue  # a dangling link: reported as unreadable when it is decoded
        key = (info.st_dev, info.st_ino)
        other = first.setdefault(key, f)
        if other is not f and (other.linked or f.linked):
            raise SdpruneError(f"{other.path} and {f.path} are one image, reached twice through a symbolic link; "
                               "sdprune reads every image once (a copy could land in the validation slice): "
                               "remove the link")
