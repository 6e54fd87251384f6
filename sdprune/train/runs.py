"""Where runs live on disk, and how commands find the newest one without being told."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sdprune.errors import SdpruneError

RUNS_DIR = "runs"
CHECKPOINT = "checkpoint.pt"
PRUNED_PREFIX = "pruned"  # `sdprune prune` names its folders pruned-...; export looks for them


def runs_root() -> Path:
    return Path(os.environ.get("SDPRUNE_RUNS", RUNS_DIR))


def new_run_dir(model: str, dataset: str, survival: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = runs_root() / f"{model}-{dataset}-{survival}-{stamp}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def find_checkpoints(root: Path | None = None, pruned: bool | None = None) -> list[Path]:
    """All checkpoints under the runs folder, newest first (pruned=True/False filters)."""
    root = root or runs_root()
    if not root.is_dir():
        return []
    found = [p for p in root.rglob(CHECKPOINT) if p.is_file()]
    if pruned is not None:
        found = [p for p in found if p.parent.name.startswith(PRUNED_PREFIX) == pruned]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def resolve_checkpoint(path: str | None, prefer_pruned: bool = False) -> Path:
    """A checkpoint path from the user's argument, a run folder, or the newest run."""
    if path:
        p = Path(path)
        if p.is_dir():
            p = p / CHECKPOINT
        if not p.exists():
            raise SdpruneError(f"checkpoint {path} not found")
        return p
    candidates = (find_checkpoints(pruned=True) if prefer_pruned else []) or find_checkpoints(pruned=False)
    if not candidates:
        raise SdpruneError(f"no checkpoint given and no run found under {runs_root()}/ (run `sdprune train` first)")
    return candidates[0]
