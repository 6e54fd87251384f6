"""Pruning a checkpoint: score (stats) -> decide (select) -> cut (surgery) -> heal -> save.

Each stage is its own module; this one only orchestrates them and records what happened:
accuracy before and after on the validation slice (where blocks are chosen) and on the
test split (reported, never used to choose), parameters, FLOPs, kept and removed blocks.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdprune.data.bundle import data_for_checkpoint
from sdprune.depth.schedule import get_survival
from sdprune.depth.select import check_criterion, check_keep, removed_blocks, select_blocks
from sdprune.depth.structure import block_layout, block_names, remove_blocks
from sdprune.errors import SdpruneError
from sdprune.nets.measure import size_of
from sdprune.prune.heal import HEAL_MODES, heal_network, recalibrate_bn
from sdprune.prune.stats import collect_stats
from sdprune.report import Reporter
from sdprune.train.checkpoint import build_model, load_checkpoint, save_checkpoint, write_json
from sdprune.train.evaluate import assess, resolve_device
from sdprune.train.runs import resolve_checkpoint

SUMMARY_FILE = "summary.json"


def default_criterion(meta: dict) -> str:
    """``survival`` when the network learned its survival probabilities, else ``ablation``."""
    return "survival" if meta.get("config", {}).get("survival") == "learned" else "ablation"


def score_blocks(model: nn.Module, data, criterion: str, device: torch.device | str = "cpu",
                 batch_size: int = 128, max_images: int | None = None,
                 reporter: Reporter | None = None) -> list[dict[str, Any]]:
    """The statistics rows a criterion needs, and no more (drop-one only for ``ablation``)."""

    if criterion in ("ablation", "influence", "norm"):
        return collect_stats(model, data, device, batch_size, max_images, criterion == "ablation", reporter)
    return block_layout(model, tuple(data.input_shape))


def check_options(keep: float | None, keep_blocks: int | None, criterion: str | None, heal: str,
                  finetune_epochs: float, max_params: float | None, max_flops: float | None) -> None:
    """Reject bad options before anything is loaded or written."""
    check_keep(keep, keep_blocks)
    if criterion is not None:
        check_criterion(criterion)
    if heal not in HEAL_MODES:
        raise SdpruneError(f"--heal must be one of {', '.join(HEAL_MODES)}, got {heal!r}")
    if not finetune_epochs >= 0:
        raise SdpruneError(f"--finetune-epochs must be >= 0, got {finetune_epochs}")
    for flag, value in (("--max-params", max_params), ("--max-flops", max_flops)):
        if value is not None and not value > 0:
            raise SdpruneError(f"{flag} must be positive, got {value}")
    if keep is None and keep_blocks is None and max_params is None and max_flops is None:
        raise SdpruneError("say how much to keep: --keep, --keep-blocks, --max-params or --max-flops")


def prune_checkpoint(ckpt_path: str | Path | None = None, keep: float | None = None,
                     keep_blocks: int | None = None, max_params: float | None = None,
                     max_flops: float | None = None, criterion: str | None = None,
                     iterative: bool = False, heal: str = "bn", finetune_epochs: float = 0,
                     distill: bool = True, keep_stages: bool = True, seed: int = 0,
                     out: str | Path | None = None, device: str = "auto", batch_size: int = 128,
                     stats_images: int | None = None, bn_batches: int = 20,
                     reporter: Reporter | None = None) -> dict[str, Any]:
    """Prune a checkpoint and write ``<run>/pruned-keepK.KK/{checkpoint.pt,summary.json}``.

    ``keep`` is the fraction of the architecture's gated blocks kept (at least that
    many, rounded up); ``iterative`` re-scores after each single removal (re-estimating
    BatchNorm statistics first when healing with ``bn``). Returns the summary.
    """

    reporter = reporter or Reporter(quiet=True)
    check_options(keep, keep_blocks, criterion, heal, finetune_epochs, max_params, max_flops)
    t_start = time.perf_counter()
    ckpt = load_checkpoint(resolve_checkpoint(str(ckpt_path) if ckpt_path is not None else None))
    meta = ckpt["meta"]
    criterion = criterion or default_criterion(meta)
    dev = resolve_device(device)
    model = build_model(ckpt).to(dev)
    data = data_for_checkpoint(meta)
    shape = tuple(data.input_shape)
    total = len(meta.get("blocks") or block_names(model))
    budget = dict(keep=keep, keep_blocks=keep_blocks, max_params=max_params, max_flops=max_flops,
                  total_blocks=total, keep_stages=keep_stages, seed=seed)
    size_before, blocks_before = size_of(model, shape), len(block_names(model))
    before = assess(model, data, dev)
    teacher = copy.deepcopy(model).eval() if finetune_epochs > 0 and distill else None

    def score() -> list[dict[str, Any]]:
        return score_blocks(model, data, criterion, dev, batch_size, stats_images, reporter)

    rows = score()
    if criterion == "survival" and len({r["survival"] for r in rows}) == 1:
        reporter.warn("every block has the same survival; the survival criterion falls back to depth order")
    sizes = size_of(model, shape)
    kept = select_blocks(rows, criterion, model_params=sizes["params"], model_flops=sizes["flops"], **budget)
    reporter.info(f"pruning {ckpt['path']}: {blocks_before} of {total} blocks, criterion {criterion}"
                  f"{' (iterative)' if iterative else ''}, keeping {len(kept)}")
    removed: list[str] = []
    if not iterative:
        removed = removed_blocks(rows, kept)
        remove_blocks(model, removed)
    else:
        while True:  # one block at a time, re-scoring the network that is left
            sizes = size_of(model, shape)
            kept = select_blocks(rows, criterion, model_params=sizes["params"], model_flops=sizes["flops"], **budget)
            if len(kept) == len(rows):
                break
            worst = select_blocks(rows, criterion, keep_blocks=len(rows) - 1, keep_stages=keep_stages, seed=seed)
            victim = removed_blocks(rows, worst)[0]
            remove_blocks(model, [victim])
            removed.append(victim)
            reporter.info(f"removed {victim} ({len(rows) - 1} blocks left)")
            if heal == "bn":
                recalibrate_bn(model, data, dev, bn_batches, seed=seed)
            rows = score()
    unhealed = assess(model, data, dev) if removed and (heal != "none" or finetune_epochs > 0) else None
    # Nothing removed: nothing shifted, outputs stay identical (unless fine-tuned).
    tuned = heal_network(model, data, dev, bn=bool(removed) and heal == "bn", finetune_epochs=finetune_epochs,
                         teacher=teacher, distill=distill, bn_batches=bn_batches, seed=seed, reporter=reporter)
    after = assess(model, data, dev) if removed or tuned else before
    size_after = size_of(model, shape)
    kept_now = block_names(model)
    name = f"pruned-keep{keep:.2f}" if keep is not None else f"pruned-keep{len(kept_now) / max(total, 1):.2f}"
    out_dir = Path(out) if out else Path(ckpt["path"]).parent / name
    summary = {
        "checkpoint": str(out_dir / "checkpoint.pt"), "parent": ckpt["path"],
        "model": meta["model"]["name"], "dataset": meta["data"]["dataset"], "criterion": criterion,
        "iterative": iterative, "heal": heal, "finetune_epochs": finetune_epochs,
        "distill": bool(distill and finetune_epochs > 0), "keep": keep, "keep_blocks": keep_blocks,
        "max_params": max_params, "max_flops": max_flops, "keep_stages": keep_stages, "seed": seed,
        "blocks": {"total": total, "before": blocks_before, "after": len(kept_now)},
        "kept": kept_now, "removed": removed,
        "params": {"before": size_before["params"], "after": size_after["params"]},
        "flops": {"before": size_before["flops"], "after": size_after["flops"]},
        "before": before, "unhealed": None if iterative and heal == "bn" else unhealed, "after": after,
        "finetune": tuned, "wall_s": time.perf_counter() - t_start,
    }
    new_meta = {**meta, "kind": "pruned", "removed": list(meta.get("removed") or []) + removed,
                "kept": kept_now, "survival": get_survival(model), "parent": ckpt["path"],
                "prune": {k: v for k, v in summary.items() if k not in ("checkpoint", "before", "after", "unhealed")},
                "metrics": {"val_loss": after["val"]["loss"], "val_acc": after["val"]["acc"],
                            "test_loss": after["test"]["loss"], "test_acc": after["test"]["acc"]}}
    save_checkpoint(out_dir / "checkpoint.pt", model.cpu(), new_meta)
    write_json(out_dir / SUMMARY_FILE, summary)
    summary["summary"] = str(out_dir / SUMMARY_FILE)
    return summary
