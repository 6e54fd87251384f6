"""Choosing the blocks of a trained network to remove: once, on the validation slice.

Used two ways, so both start from the same decision:

* ``sdprune prune``-style direct pruning of a network that never learned survivals
  (benchmark B5's arm (a)): ``best_selection`` prunes with every data-driven criterion,
  heals BatchNorm, and keeps the criterion whose pruned network is best on validation;
* the step-0 ranking of a prune-aware retrofit (``sdprune train --init W --survival
  learned --target-keep K``): ``rank_for_retrofit`` returns scores that rank the blocks
  that selection (or, with ``train --criterion C``, `prune --criterion C`'s one-shot choice)
  keeps above the ones it removes, so retrofit and direct pruning differ only in how the
  network is brought to the smaller architecture.
"""

from __future__ import annotations

import torch
from torch import nn

from sdprune.choices import RANK_IMAGES, RETROFIT_CRITERIA, STATS_IMAGES
from sdprune.data.bundle import DataBundle
from sdprune.depth.select import Budget, importance, removed_blocks
from sdprune.depth.structure import all_block_names
from sdprune.prune.heal import BN_HEAL
from sdprune.prune.pipeline import Pruned, choose_blocks, prune_model, score_blocks

# Criteria that read the trained network (survival is only meaningful once learned;
# depth / every-other / random ignore the data).
MEASURED = tuple(c for c in RETROFIT_CRITERIA if c != "best")


def best_selection(model: nn.Module, data: DataBundle, keep: float, device: torch.device | str = "cpu",
                   criteria: tuple[str, ...] = MEASURED, seed: int = 0,
                   max_images: int | None = RANK_IMAGES) -> tuple[str, Pruned, list[dict]]:
    """The criterion whose pruned, BN-healed network is best on validation, that network, and the rows.

    ``model`` is left untouched; the decision never sees the test split.
    """
    rows = score_blocks(model, data, criteria, device, max_images=max_images)
    total = len(all_block_names(model))  # keep is a fraction of the architecture, removed blocks included
    candidates = {c: prune_model(model, rows, data, c, Budget(keep), BN_HEAL, total_blocks=total, seed=seed,
                                 device=device) for c in criteria}
    best = max(candidates, key=lambda c: candidates[c].after["val"]["acc"])
    return best, candidates[best], rows


def rank_for_retrofit(model: nn.Module, data: DataBundle, device: torch.device, keep: float,
                      criterion: str | None = None) -> list[float]:
    """One score per gated block, in forward order: the blocks the decision keeps score in
    [1, 1.5], the ones it removes in [0, 0.5] (ordered within each by the criterion's importance;
    by drop-one loss increase for the val-best decision).

    ``criterion`` None or "best": ``best_selection`` over every measured criterion on
    ``RANK_IMAGES``. A named one: ``choose_blocks``, `sdprune prune`'s one-shot choice, on
    prune's default ``STATS_IMAGES``, so the retrofit excludes the blocks `prune --criterion C`
    would remove from the same network on the same data.
    """
    model.to(device)
    if criterion in (None, "best"):
        _, chosen, rows = best_selection(model, data, keep, device)
        removed, order = set(chosen.removed), "ablation"
    else:
        rows = score_blocks(model, data, (criterion,), device, max_images=STATS_IMAGES)
        kept = choose_blocks(model, rows, criterion, Budget(keep), data.input_shape,
                             total_blocks=len(all_block_names(model)))
        removed, order = set(removed_blocks(rows, kept)), criterion
    score = torch.tensor(importance(rows, order))
    spread = (score - score.min()) / max(float(score.max() - score.min()), 1e-12)
    return [(0.0 if r["name"] in removed else 1.0) + 0.5 * float(s) for r, s in zip(rows, spread)]
