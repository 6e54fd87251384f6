"""Unreadable files a streamed folder skipped: counted once per file, over every rank.

Under torchrun each rank meets the unreadable files of its own share of the epoch (and a
substitute chain can meet one file on two ranks), so after each epoch the ranks pool the
positions of the files they met for the first time; every rank then knows the same set,
and the warning counts each file once, whichever rank met it.
"""

from __future__ import annotations

import torch

from sdprune.data.bundle import DataBundle
from sdprune.data.folder import FolderSet
from sdprune.report import Reporter
from sdprune.train.distributed import Distributed, gather_rows

SPLITS = (("train", "training"), ("val", "validation"), ("test", "test"))


def count_skipped(data: DataBundle) -> list[int]:
    """How many unreadable files each split (train, val, test) knows so far (0 in memory)."""
    return [len(getattr(getattr(data, split), "skipped", ())) for split, _ in SPLITS]


def report_skipped(data: DataBundle, before: list[int], world: Distributed, device: torch.device,
                   reporter: Reporter) -> None:
    """Warn about the unreadable files met since ``before`` (``count_skipped``), over every rank.

    Every rank calls it, with the same splits, at the same point: it makes the same
    collectives on every rank whatever each one met.
    """
    for (name, noun), seen in zip(SPLITS, before):
        split = getattr(data, name)
        if not isinstance(split, FolderSet):
            continue
        mine = [split.paths.index(path) for path in list(split.skipped)[seen:]]  # few: a scan each is fine
        found = torch.unique(gather_rows(torch.tensor(mine, dtype=torch.long, device=device), world)).tolist()
        for i in found:  # now every rank knows every file any rank met
            split.skipped.setdefault(split.paths[i], "unreadable (met on another rank)")
        if found:
            instead = ", trained on the next readable file in their place" if name == "train" else ", left out"
            reporter.warn(f"skipped {len(found)} unreadable {noun} images (first: {split.paths[found[0]]}){instead}")
