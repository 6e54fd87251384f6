"""Where `sdprune prune` writes: one folder per distinct prune, never silently overwritten.

The folder is named by what was asked (budget, criterion, and the options that change the
result most); the summary records every setting, so a folder that holds a prune made
with other settings is refused rather than overwritten. Names start with ``pruned``:
``sdprune.train.runs.find_checkpoints(pruned=True)`` finds them by that prefix.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from sdprune.depth.schedule import get_survival
from sdprune.errors import SdpruneError
from sdprune.prune.heal import HealSpec
from sdprune.train.checkpoint import save_checkpoint, write_json
from sdprune.train.runs import CHECKPOINT, PRUNED_PREFIX

if TYPE_CHECKING:
    from sdprune.prune.pipeline import Budget

SUMMARY_FILE = "summary.json"
_MEASURED = ("checkpoint", "before", "after", "unhealed", "reference", "bn")  # not copied into the metadata


def prune_settings(criterion: str, budget: Budget, heal_spec: HealSpec, iterative: bool, seed: int,
                   stats_images: int | None) -> dict[str, Any]:
    """Every choice that can change a prune's result (what two prunes must share to share a folder)."""
    return {"criterion": criterion, **asdict(budget), "iterative": iterative, "heal": heal_spec.mode,
            "finetune_epochs": heal_spec.finetune_epochs,
            "distill": heal_spec.distill and heal_spec.finetune_epochs > 0,
            "bn_batches": heal_spec.bn_batches if heal_spec.bn else None, "seed": seed,
            "stats_images": stats_images}


def folder_name(criterion: str, budget: Budget, heal_spec: HealSpec, iterative: bool, seed: int) -> str:
    """``pruned-keep0.50-ablation``, marked ``-iterative``, ``-finetune``, ``-noheal``, ``-seedN`` when set."""
    marks = [budget.label(), criterion, "iterative" if iterative else None,
             {"finetune": "finetune", "none": "noheal"}.get(heal_spec.mode), f"seed{seed}" if seed else None]
    return "-".join([PRUNED_PREFIX] + [m for m in marks if m])


def check_folder(folder: Path, settings: dict[str, Any]) -> None:
    """Refuse ``folder`` if it holds a prune made with other settings (the same prune may be redone)."""
    summary, checkpoint = folder / SUMMARY_FILE, folder / CHECKPOINT
    if not summary.is_file():
        if checkpoint.exists():
            raise SdpruneError(f"{folder} holds a checkpoint without a prune summary; pass --out to write elsewhere")
        return
    try:
        old = json.loads(summary.read_text())
    except (OSError, ValueError):
        old = {}
    differs = [k for k in settings if old.get(k, "?") != settings[k]]
    if differs:
        k = differs[0]
        raise SdpruneError(f"{folder} holds a prune made with other settings ({k} {old.get(k)!r} there, "
                           f"{settings[k]!r} now); pass --out to write elsewhere")


def write_pruned(folder: Path, model: nn.Module, meta: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """Write ``checkpoint.pt`` (metadata of the parent, extended) and ``summary.json``; returns the summary."""
    summary = {"checkpoint": str(folder / CHECKPOINT), **summary}
    after = summary["after"]
    new_meta = {**meta, "kind": "pruned", "removed": list(meta.get("removed") or []) + summary["removed"],
                "kept": summary["kept"], "survival": get_survival(model), "parent": summary["parent"],
                "prune": {k: v for k, v in summary.items() if k not in _MEASURED},
                "metrics": {"val_loss": after["val"]["loss"], "val_acc": after["val"]["acc"],
                            "test_loss": after["test"]["loss"], "test_acc": after["test"]["acc"]}}
    save_checkpoint(folder / CHECKPOINT, model, new_meta)
    write_json(folder / SUMMARY_FILE, summary)
    return {**summary, "summary": str(folder / SUMMARY_FILE)}
