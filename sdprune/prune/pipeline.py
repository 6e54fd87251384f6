"""Pruning, written once: score -> select -> remove -> heal -> measure.

``prune_model`` is the whole pipeline on a network in memory: from the network's
statistics rows (``score_blocks``) it chooses the blocks a ``Budget`` keeps
(``sdprune.depth.select`` decides), removes the others from a copy
(``sdprune.depth.structure``), heals the copy as a ``HealSpec`` says
(``sdprune.prune.heal``) and measures it: accuracy and loss on the validation slice
(where every choice is made) and the test split (reported, never used to choose),
parameters, FLOPs. ``reference`` puts the unpruned network through the same healing, so a
change from pruning compares like with like. ``prune_checkpoint`` (`sdprune prune`),
``sweep_checkpoint`` (`sdprune sweep`) and ``tools/bench_prune_quality.py`` (B2) are
loops around these functions.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdprune.choices import STATS_IMAGES, check_seed
from sdprune.data.bundle import DataBundle, data_for_checkpoint
from sdprune.depth.select import (
    Budget,
    check_criterion,
    needs_statistics,
    removed_blocks,
    select_blocks,
    target_count,
)
from sdprune.depth.structure import block_layout, block_names, remove_blocks
from sdprune.files import check_output, file_bytes
from sdprune.nets.measure import size_of
from sdprune.prune.heal import BN_HEAL, NO_BATCHNORM, HealSpec, has_batchnorm, heal, heal_bn
from sdprune.prune.output import check_folder, folder_name, prune_settings, write_pruned
from sdprune.prune.stats import check_stats_args, collect_stats
from sdprune.report import Reporter
from sdprune.train.checkpoint import build_model, kept_blocks, load_checkpoint, total_blocks
from sdprune.train.evaluate import assess, resolve_device
from sdprune.train.lock import locked_run
from sdprune.train.runs import resolve_checkpoint

Scores = dict[str, dict[str, float]]  # {"val": {"loss", "acc"}, "test": {"loss", "acc"}}
Rescore = Callable[[nn.Module], list[dict[str, Any]]]


@dataclass
class Pruned:
    """A pruned, healed network and what was measured on it."""

    model: nn.Module
    kept: list[str]
    removed: list[str]
    unhealed: Scores  # right after removal, trained statistics
    bn: dict | None  # heal_bn's record: before / after re-estimation, which statistics it keeps
    finetune: dict | None
    after: Scores  # the network as it is returned
    params: int
    flops: int
    # seconds: cut_s (removal and the unhealed measurement: all that precedes a fine-tune in
    # here), finetune_s, heal_s (what follows it: BN re-estimation and the measurements)
    timing: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def mode(self) -> str:
        """The heal mode that was applied (``HealSpec.mode``'s values): none, bn or finetune."""
        return "finetune" if self.finetune else "bn" if self.bn else "none"

    def record(self, reference: Reference) -> dict[str, Any]:
        """Everything but the network (JSON-ready), with the change from pruning against ``reference``."""
        return {"kept": self.kept, "removed": self.removed, "unhealed": self.unhealed, "bn": self.bn,
                "finetune": self.finetune, "after": self.after, "change": reference.change(self.after)}


@dataclass(frozen=True)
class Reference:
    """The unpruned network, as trained and with BN statistics re-estimated (always both).

    ``statistics`` says which BN statistics it has when healed the way pruned networks are
    (the validation rule of ``heal_bn``: "recalibrated" or "trained"; "trained" without BN
    healing; "none" for a network without BatchNorm); ``healed`` is then the figure the
    change from pruning is measured against.
    ``network``: that healed network, the point of a sweep that removes nothing.
    """

    trained: Scores
    recalibrated: Scores
    statistics: str
    network: Pruned

    @property
    def healed(self) -> Scores:
        return self.recalibrated if self.statistics == "recalibrated" else self.trained

    @property
    def params(self) -> int:
        return self.network.params

    @property
    def flops(self) -> int:
        return self.network.flops

    def change(self, scores: Scores) -> dict[str, float]:
        """Accuracy change in points, per split, of ``scores`` against the healed reference
        (``scores - reference``: negative when pruning lost accuracy)."""
        return {split: scores[split]["acc"] - self.healed[split]["acc"] for split in ("val", "test")}

    def record(self) -> dict[str, Any]:
        """Everything but the network (JSON-ready)."""
        return {"trained": self.trained, "recalibrated": self.recalibrated, "statistics": self.statistics,
                "healed": self.healed, "params": self.params, "flops": self.flops}


def default_criterion(meta: dict) -> str:
    """``survival`` when the network learned its survival probabilities, else ``ablation``."""
    return "survival" if meta.get("config", {}).get("survival") == "learned" else "ablation"


def score_blocks(model: nn.Module, data: DataBundle, criteria: Sequence[str], device: torch.device | str = "cpu",
                 batch_size: int = 128, max_images: int | None = None,
                 reporter: Reporter | None = None) -> list[dict[str, Any]]:
    """The statistics rows some criteria need, and no more (drop-one only for ``ablation``)."""
    if needs_statistics(criteria):
        return collect_stats(model, data, device, batch_size, max_images, "ablation" in criteria, reporter)
    return block_layout(model, tuple(data.input_shape))


def choose_blocks(model: nn.Module, rows: list[dict[str, Any]], criterion: str, budget: Budget,
                  input_shape: Sequence[int], total_blocks: int | None = None, seed: int = 0) -> list[str]:
    """The blocks ``budget`` keeps of ``model`` under ``criterion``, in forward order (one shot).

    ``total_blocks``: the architecture's count that ``keep`` is a fraction of (default: the rows).
    """
    sizes = size_of(model, tuple(input_shape))
    return select_blocks(rows, criterion, keep=budget.keep, keep_blocks=budget.keep_blocks,
                         max_params=budget.max_params, max_flops=budget.max_flops, model_params=sizes["params"],
                         model_flops=sizes["flops"], total_blocks=total_blocks, keep_stages=budget.keep_stages,
                         seed=seed)


def choose_iteratively(model: nn.Module, rows: list[dict[str, Any]], data: DataBundle, criterion: str,
                       budget: Budget, rescore: Rescore, heal_spec: HealSpec, total_blocks: int | None = None,
                       seed: int = 0, device: torch.device | str = "cpu",
                       reporter: Reporter | None = None) -> list[str]:
    """The blocks to remove, one at a time, in removal order: after each removal the network
    left is BN-healed (when ``heal_spec`` says so) and re-scored by ``rescore``. ``model`` is untouched."""
    reporter = reporter or Reporter(quiet=True)
    work, removed = copy.deepcopy(model), []
    while len(choose_blocks(work, rows, criterion, budget, data.input_shape, total_blocks, seed)) < len(rows):
        worst = select_blocks(rows, criterion, keep_blocks=len(rows) - 1, keep_stages=budget.keep_stages, seed=seed)
        victim = removed_blocks(rows, worst)[0]
        remove_blocks(work, [victim])
        removed.append(victim)
        reporter.info(f"removed {victim} ({len(rows) - 1} blocks left)")
        if heal_spec.bn:
            heal_bn(work, data, device, heal_spec.bn_batches, seed)
        rows = rescore(work)
    return removed


def cut_and_heal(model: nn.Module, removed: Sequence[str], data: DataBundle, heal_spec: HealSpec,
                 seed: int = 0, device: torch.device | str = "cpu", reporter: Reporter | None = None) -> Pruned:
    """A copy of ``model`` without the ``removed`` blocks, healed and measured; ``model`` is untouched.

    A fine-tune distils from ``model``. With nothing removed nothing is fine-tuned: the copy
    is the unpruned network healed as the reference is (BN statistics only).
    """
    clock = time.perf_counter()
    pruned = remove_blocks(copy.deepcopy(model), removed)
    spec = heal_spec if removed else replace(heal_spec, finetune_epochs=0.0)
    # heal_bn measures the network it starts from: right after removal unless a fine-tune comes first
    unhealed = assess(pruned, data, device) if spec.finetune_epochs > 0 or not spec.bn else None
    timing = {"cut_s": time.perf_counter() - clock}
    clock = time.perf_counter()
    steps = heal(pruned, data, spec, device, teacher=model, seed=seed, reporter=reporter)
    timing["finetune_s"] = steps["finetune"]["wall_s"] if steps["finetune"] else 0.0
    bn = steps["bn"]
    if bn is not None:  # heal_bn measured the network with the statistics it kept
        unhealed = unhealed or bn["before"]
        after = bn["after"] if bn["statistics"] == "recalibrated" else bn["before"]
    else:
        after = assess(pruned, data, device) if steps["finetune"] else unhealed
    size = size_of(pruned, tuple(data.input_shape))
    timing["heal_s"] = time.perf_counter() - clock - timing["finetune_s"]
    return Pruned(pruned, block_names(pruned), list(removed), unhealed, bn, steps["finetune"], after,
                  size["params"], size["flops"], timing)


def reference(model: nn.Module, data: DataBundle, heal_spec: HealSpec, seed: int = 0,
              device: torch.device | str = "cpu") -> Reference:
    """The unpruned network through the same pipeline (nothing removed), BN re-estimated always
    (on a separate copy when ``heal_spec`` does not re-estimate)."""
    unpruned = cut_and_heal(model, [], data, heal_spec, seed, device)
    bn = unpruned.bn or heal_bn(copy.deepcopy(model), data, device, heal_spec.bn_batches, seed)
    statistics = bn["statistics"] if heal_spec.bn or bn["statistics"] == "none" else "trained"
    return Reference(bn["before"], bn["after"], statistics, unpruned)


def prune_model(model: nn.Module, rows: list[dict[str, Any]], data: DataBundle, criterion: str, budget: Budget,
                heal_spec: HealSpec = BN_HEAL, total_blocks: int | None = None, seed: int = 0,
                device: torch.device | str = "cpu", rescore: Rescore | None = None,
                reporter: Reporter | None = None, kept: Sequence[str] | None = None) -> Pruned:
    """The network ``budget`` keeps of ``model`` under ``criterion``, removed for real, healed, measured.

    ``rows``: ``model``'s statistics (``score_blocks``). With ``rescore`` (a network's rows)
    blocks go one at a time, re-scoring what is left (``choose_iteratively``). ``kept``: the
    one-shot choice when the caller already made it (``choose_blocks`` measures sizes: not
    twice); unused with ``rescore``.
    """
    if rescore is None:
        if kept is None:
            kept = choose_blocks(model, rows, criterion, budget, data.input_shape, total_blocks, seed)
        removed = removed_blocks(rows, kept)
    else:
        removed = choose_iteratively(model, rows, data, criterion, budget, rescore, heal_spec, total_blocks,
                                     seed, device, reporter)
    return cut_and_heal(model, removed, data, heal_spec, seed, device, reporter)


def prune_checkpoint(ckpt_path: str | Path | None, budget: Budget, criterion: str | None = None,
                     heal_spec: HealSpec = BN_HEAL, iterative: bool = False, seed: int = 0,
                     out: str | Path | None = None, device: str = "auto", batch_size: int = 128,
                     stats_images: int | None = STATS_IMAGES, reporter: Reporter | None = None
                     ) -> dict[str, Any]:
    """Prune a checkpoint into ``<run>/pruned-<budget>-<criterion>[...]/{checkpoint.pt,summary.json}``.

    Refuses, before any work, a folder that holds the checkpoint being pruned or one that is
    not a pruned one, and (unless ``out`` is given) a prune made with other settings.
    Returns the summary: the reference, the pruned network at each healing step, the change.
    """
    reporter = reporter or Reporter(quiet=True)
    if criterion is not None:
        check_criterion(criterion)
    check_stats_args(batch_size, stats_images)
    t_start = time.perf_counter()
    check_seed(seed)
    ckpt = load_checkpoint(resolve_checkpoint(str(ckpt_path) if ckpt_path is not None else None, reporter=reporter),
                           reporter)
    meta = ckpt["meta"]
    total, present = total_blocks(meta), len(kept_blocks(meta))
    target_count(total, budget.keep, budget.keep_blocks, present)  # a keep above what is left: before scoring
    criterion = criterion or default_criterion(meta)
    settings = prune_settings(criterion, budget, heal_spec, iterative, seed, stats_images)
    out_dir = Path(out) if out else Path(ckpt["path"]).parent / folder_name(criterion, budget, heal_spec,
                                                                            iterative, seed)
    check_folder(out_dir, ckpt["path"], None if out else settings)
    check_output(out_dir, folder=True, need_bytes=file_bytes(ckpt["path"]), what="output folder")
    # one prune writes a folder at a time (a second is refused at once); the checks again, under the lock
    with locked_run(out_dir, "sdprune command", keep_file=False):
        check_folder(out_dir, ckpt["path"], None if out else settings)
        dev = resolve_device(device)
        model = build_model(ckpt).to(dev)
        data = data_for_checkpoint(meta)

        def score(network: nn.Module) -> list[dict[str, Any]]:
            return score_blocks(network, data, [criterion], dev, batch_size, stats_images, reporter)

        if needs_statistics([criterion]):  # drop-one can take many minutes: say so before it starts
            images = min(len(data.val), stats_images or len(data.val))
            reporter.info(f"scoring {present} blocks by {criterion} on {images} validation images")
        timing = {"load_s": time.perf_counter() - t_start}  # the checkpoint and the images
        clock = time.perf_counter()
        rows = score(model)
        timing["score_s"] = time.perf_counter() - clock
        if criterion == "survival" and len({r["survival"] for r in rows}) == 1:
            reporter.warn("every block has the same survival; the survival criterion falls back to depth order")
        # The one-shot choice, before any healing: a budget that cannot be met fails here (whether
        # it can does not depend on the order of removal, so this holds for --iterative too).
        clock = time.perf_counter()
        kept = choose_blocks(model, rows, criterion, budget, data.input_shape, total, seed)
        reporter.info(f"pruning {ckpt['path']}: {present} of {total} blocks, criterion {criterion}"
                      f"{' (iterative)' if iterative else ''}, keeping {len(kept)}, heal {heal_spec.mode}")
        if heal_spec.bn and not has_batchnorm(model):  # asked for (the default), and it cannot be done
            reporter.warn(NO_BATCHNORM)
        pruned = prune_model(model, rows, data, criterion, budget, heal_spec, total, seed, dev,
                             score if iterative else None, reporter, kept)
        # where the time went: a user waiting on a fine-tune wants to know what came before it
        timing["choose_s"] = time.perf_counter() - clock - sum(pruned.timing.values())  # --iterative rescores here
        timing.update(pruned.timing)
        # The reference does not depend on the pruning: measured last, it keeps no fine-tune waiting.
        reporter.info("measuring the unpruned reference (healed as the pruned network is)")
        clock = time.perf_counter()
        ref = reference(model, data, heal_spec, seed, dev)
        timing["reference_s"] = time.perf_counter() - clock
        if pruned.finetune:
            timing["before_finetune_s"] = sum(timing[k] for k in ("load_s", "score_s", "choose_s", "cut_s"))
        reporter.info("time: " + ", ".join(f"{k[:-2].replace('_', ' ')} {v:.0f}s" for k, v in timing.items()))
        summary = {"parent": ckpt["path"], "model": meta["model"]["name"], "dataset": meta["data"]["dataset"],
                   **settings, "blocks": {"total": total, "before": present, "after": len(pruned.kept)},
                   "params": {"before": ref.params, "after": pruned.params},
                   "flops": {"before": ref.flops, "after": pruned.flops},
                   "unpruned": ref.trained, "reference": ref.record(), **pruned.record(ref),
                   "timing": timing, "wall_s": time.perf_counter() - t_start}
        return write_pruned(out_dir, pruned.model.cpu(), meta, summary)
