"""Where `sdprune prune` writes: one folder per distinct prune, never silently overwritten.

The folder is named by what was asked (budget, criterion, and the options that change the
result most); the summary records every setting, so a folder that holds a prune made
with other settings is refused rather than overwritten (``--out`` may replace another
prune, never the checkpoint being pruned or a training checkpoint). Names start with
``pruned``: ``sdprune.train.runs.find_checkpoints(pruned=True)`` finds them by that prefix.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from sdprune.depth.schedule import get_survival
from sdprune.depth.select import Budget
from sdprune.errors import SdpruneError
from sdprune.prune.heal import HealSpec
from sdprune.train.checkpoint import load_checkpoint, save_checkpoint, write_json
from sdprune.files import TEMP_SUFFIX, remove_stale_temps
from sdprune.train.runs import CHECKPOINT, PRUNED_PREFIX, record_run

SUMMARY_FILE = "summary.json"
_MEASURED = ("checkpoint", "unpruned", "after", "unhealed", "reference", "bn")  # not copied into the metadata


def prune_settings(criterion: str, budget: Budget, heal_spec: HealSpec, iterative: bool, seed: int,
                   stats_images: int | None) -> dict[str, Any]:
    """Every choice that can change a prune's result (what two prunes must share to share a folder)."""
    return {"criterion": criterion, **asdict(budget), "iterative": iterative, **heal_spec.record(), "seed": seed,
            "stats_images": stats_images}


def folder_name(criterion: str, budget: Budget, heal_spec: HealSpec, iterative: bool, seed: int) -> str:
    """``pruned-keep0.50-ablation``, marked ``-iterative``, ``-finetune``, ``-noheal``, ``-seedN`` when set."""
    marks = [budget.label(), criterion, "iterative" if iterative else None,
             {"finetune": "finetune", "none": "noheal"}.get(heal_spec.mode), f"seed{seed}" if seed else None]
    return "-".join([PRUNED_PREFIX] + [m for m in marks if m])


def check_folder(folder: Path, source: str | Path, settings: dict[str, Any] | None) -> None:
    """Refuse a folder a prune must not write into, before any work.

    Always refused: a folder whose checkpoint is the one being pruned, or holds a checkpoint
    that is not a pruned one (a training run's). With ``settings`` (the default folder, not
    ``--out``) also one holding a prune made with other settings, or a checkpoint whose
    summary is missing or unreadable; the same prune may be redone.
    """
    if folder.exists() and not folder.is_dir():
        raise SdpruneError(f"{folder} is a file, not a folder")
    checkpoint = folder / CHECKPOINT
    if checkpoint.exists():
        if os.path.samefile(checkpoint, source):
            raise SdpruneError(f"{checkpoint} is the checkpoint being pruned; write elsewhere")
        try:
            kind = load_checkpoint(checkpoint)["meta"].get("kind")
        except SdpruneError:
            kind = "unreadable"
        if kind != "pruned":
            raise SdpruneError(f"{folder} holds a checkpoint that is not a pruned one ({kind}); write elsewhere")
    if settings is None:
        return
    if checkpoint.exists() and not (folder / SUMMARY_FILE).exists():
        raise SdpruneError(f"{folder} holds a checkpoint without a prune summary; pass --out to write elsewhere")
    check_settings(folder / SUMMARY_FILE, settings, "prune")
    check_source(folder / SUMMARY_FILE, source, "prune", "parent")


def check_settings(record: Path, settings: dict[str, Any], what: str) -> None:
    """Refuse to replace ``record`` (a JSON summary) of a ``what`` made with other ``settings``."""
    if not record.exists():
        return
    try:
        old = json.loads(record.read_text())
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict):
        raise SdpruneError(f"{record.parent} holds an unreadable {what} summary ({record.name}); "
                           "pass --out to write elsewhere")
    differs = [k for k in settings if old.get(k, "?") != settings[k]]
    if differs:
        k = differs[0]
        raise SdpruneError(f"{record.parent} holds a {what} made with other settings ({k} {old.get(k)!r} there, "
                           f"{settings[k]!r} now); pass --out to write elsewhere")


def check_source(record: Path, source: str | Path, what: str, key: str = "checkpoint") -> None:
    """Refuse to replace ``record`` (a JSON summary, ``record[key]`` the checkpoint it was made
    from) when it was made from another checkpoint of the same folder."""
    try:
        old = json.loads(record.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return  # none yet (an unreadable one is check_settings' to refuse)
    if isinstance(old, str) and Path(old).name != Path(source).name:
        raise SdpruneError(f"{record.parent} holds a {what} of {Path(old).name}, not of {Path(source).name}; "
                           "pass --out to write elsewhere")


def write_pruned(folder: Path, model: nn.Module, meta: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """Write ``checkpoint.pt`` (metadata of the parent, extended) and ``summary.json``; returns the summary.

    Both are written in full under temporary names first, then the old summary goes and
    the two are renamed in, summary last: a crash never leaves a new checkpoint beside an
    old summary (at worst a checkpoint without one, which ``check_folder`` refuses to trust).
    """
    summary = {"checkpoint": str(folder / CHECKPOINT), **summary}
    after = summary["after"]
    new_meta = {**meta, "kind": "pruned", "removed": list(meta.get("removed") or []) + summary["removed"],
                "kept": summary["kept"], "survival": get_survival(model), "parent": summary["parent"],
                "prune": {k: v for k, v in summary.items() if k not in _MEASURED},
                "metrics": {"val_loss": after["val"]["loss"], "val_acc": after["val"]["acc"],
                            "test_loss": after["test"]["loss"], "test_acc": after["test"]["acc"]}}
    created = not folder.exists()
    if not created:
        remove_stale_temps(folder)
    staged = {name: folder / f".{name}.{os.getpid()}-new{TEMP_SUFFIX}" for name in (CHECKPOINT, SUMMARY_FILE)}
    try:
        save_checkpoint(staged[CHECKPOINT], model, new_meta)
        write_json(staged[SUMMARY_FILE], summary)
        (folder / SUMMARY_FILE).unlink(missing_ok=True)
        for name in (CHECKPOINT, SUMMARY_FILE):
            os.replace(staged[name], folder / name)
    except BaseException:
        for path in staged.values():
            path.unlink(missing_ok=True)
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    record_run(folder, "pruned")
    return {**summary, "summary": str(folder / SUMMARY_FILE)}
