"""Deciding which blocks to keep: pure functions of the statistics rows.

A criterion turns rows (``sdprune.prune.stats``) into an importance per block; blocks are then
removed least important first until every target of the ``Budget`` is met (a kept count, a
parameter budget, a FLOP budget), skipping a block whose removal would empty its stage unless
``keep_stages=False``. Ties go to the deeper block (removed first), so every criterion is
deterministic; ``random`` is seeded.
"""

from __future__ import annotations

import math
import random as _random
from dataclasses import dataclass
from typing import Any, Sequence

from sdprune.choices import CRITERIA
from sdprune.errors import SdpruneError
from sdprune.report import human

_NEEDS = {"survival": "survival", "ablation": "delta_loss", "influence": "influence", "norm": "residual_ratio"}
_LAYOUT = ("survival",)  # in every layout row (sdprune.depth.structure); the other fields are measured


def check_keep(keep: float | None, keep_blocks: int | None) -> None:
    """Reject a keep fraction or block count no network can use (before any work)."""
    if keep is not None:
        if not isinstance(keep, (int, float)) or not (0.0 < keep <= 1.0):  # NaN fails both
            raise SdpruneError(f"--keep must be a fraction in (0, 1], got {keep}")
    if keep_blocks is not None and keep_blocks < 1:
        raise SdpruneError(f"--keep-blocks {keep_blocks} leaves no block; keep at least 1")


def check_budget(keep: float | None, keep_blocks: int | None, max_params: float | None,
                 max_flops: float | None) -> None:
    """Reject a budget no network can use, or none at all (before any work)."""
    check_keep(keep, keep_blocks)
    for flag, value in (("--max-params", max_params), ("--max-flops", max_flops)):
        if value is not None and not (value > 0 and math.isfinite(value)):  # NaN too
            raise SdpruneError(f"{flag} must be positive and finite, got {value}")
    if keep is None and keep_blocks is None and max_params is None and max_flops is None:
        raise SdpruneError("say how much to keep: --keep, --keep-blocks, --max-params or --max-flops")


@dataclass(frozen=True)
class Budget:
    """How much of a network to keep; every target given must be met.

    ``keep``: a fraction of the architecture's gated blocks (rounded up to whole blocks);
    ``keep_blocks``: a count; ``max_params`` / ``max_flops``: budgets on the whole
    network. ``keep_stages``: every stage keeps at least one block.
    """

    keep: float | None = None
    keep_blocks: int | None = None
    max_params: float | None = None
    max_flops: float | None = None
    keep_stages: bool = True

    def __post_init__(self) -> None:
        check_budget(self.keep, self.keep_blocks, self.max_params, self.max_flops)

    def label(self) -> str:
        """What is asked for, as a name: keep0.50, blocks7, params150k, flops20M (joined by -)."""
        parts = [f"keep{self.keep:.2f}" if self.keep is not None else None,
                 f"blocks{self.keep_blocks}" if self.keep_blocks is not None else None,
                 f"params{human(self.max_params)}" if self.max_params is not None else None,
                 f"flops{human(self.max_flops)}" if self.max_flops is not None else None]
        return "-".join(p for p in parts if p)


def needs_statistics(criteria: Sequence[str]) -> bool:
    """Whether any criterion ranks by a measured statistic (``sdprune.prune.stats``), not the layout alone."""
    return any(c in _NEEDS and _NEEDS[c] not in _LAYOUT for c in criteria)


def check_criterion(criterion: str) -> None:
    if criterion not in CRITERIA:
        raise SdpruneError(f"unknown criterion {criterion!r}; choose from {', '.join(CRITERIA)}")


def importance(rows: Sequence[dict[str, Any]], criterion: str, seed: int = 0) -> list[float]:
    """Importance of each row under a criterion (higher = more worth keeping)."""
    check_criterion(criterion)
    field = _NEEDS.get(criterion)
    if field is not None:
        missing = [r["name"] for r in rows if r.get(field) is None]
        if missing:
            what = "drop-one ablation statistics" if field == "delta_loss" else f"the {field} statistic"
            raise SdpruneError(f"criterion {criterion} needs {what}, missing for block {missing[0]}")
        return [float(r[field]) for r in rows]
    if criterion == "depth":  # drop the deepest first
        return [-float(r["position"]) for r in rows]
    if criterion == "every-other":
        # LayerDrop's every-other, within each stage and sparing transitions: odd
        # indices go first, then the remaining non-transition blocks, deepest first.
        return [(2.0 if r["transition"] else 0.0 if r["index"] % 2 else 1.0) - r["position"] / (len(rows) + 1)
                for r in rows]
    rng = _random.Random(seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    return [float(rank) for rank in order]


def target_count(total: int, keep: float | None, keep_blocks: int | None, present: int | None = None) -> int | None:
    """Blocks to keep for a fraction of ``total`` (at least that fraction: rounded up) or a count.

    ``present``: the blocks the network still has (fewer than ``total`` once pruned); a
    target above it is an error, since it would silently remove nothing.
    """
    counts = []
    if keep is not None:
        counts.append(math.ceil(keep * total - 1e-9))
    if keep_blocks is not None:
        counts.append(keep_blocks)
    target = min(counts) if counts else None
    if target is not None and present is not None and target > present:
        has = f"is already pruned to {present} of {total}" if present < total else f"has {present}"
        raise SdpruneError(f"the network {has} blocks: cannot keep {target}")
    return target


def select_blocks(rows: Sequence[dict[str, Any]], criterion: str, keep: float | None = None,
                  keep_blocks: int | None = None, max_params: int | None = None,
                  max_flops: int | None = None, model_params: int | None = None,
                  model_flops: int | None = None, total_blocks: int | None = None,
                  keep_stages: bool = True, seed: int = 0) -> list[str]:
    """Names of the blocks to keep, in forward order.

    ``keep`` is a fraction of ``total_blocks`` (default: the rows; pass the full
    architecture's count when re-pruning a pruned network); ``keep_blocks`` a count;
    either above the rows present is an error (``target_count``);
    ``max_params``/``max_flops`` budgets on the whole network, which need its current
    totals ``model_params``/``model_flops`` (rows say what each removal saves).
    """
    check_criterion(criterion)
    check_budget(keep, keep_blocks, max_params, max_flops)
    for flag, value, total in (("--max-params", max_params, model_params), ("--max-flops", max_flops, model_flops)):
        if value is not None and total is None:
            raise ValueError(f"{flag} needs the network's current total")
    rows = list(rows)
    target = target_count(total_blocks or len(rows), keep, keep_blocks, present=len(rows))
    scores = importance(rows, criterion, seed)
    order = sorted(range(len(rows)), key=lambda i: (scores[i], -rows[i]["position"]))
    params, flops = model_params or 0, model_flops or 0
    kept = set(range(len(rows)))
    per_stage: dict[Any, int] = {}
    for r in rows:
        per_stage[r["stage"]] = per_stage.get(r["stage"], 0) + 1

    def satisfied() -> bool:
        return ((target is None or len(kept) <= target)
                and (max_params is None or params <= max_params)
                and (max_flops is None or flops <= max_flops))

    for i in order:
        if satisfied():
            break
        stage = rows[i]["stage"]
        if len(kept) == 1 or (keep_stages and per_stage[stage] == 1):
            continue  # a network keeps at least one block (and, by default, one per stage)
        kept.discard(i)
        per_stage[stage] -= 1
        params -= int(rows[i]["params"])
        flops -= int(rows[i]["flops"])
    if not satisfied():
        raise SdpruneError(_why_unmet(target, len(kept), max_params, params, max_flops, flops, keep_stages))
    return [rows[i]["name"] for i in sorted(kept, key=lambda i: rows[i]["position"])]


def _why_unmet(target: int | None, count: int, max_params: int | None, params: int,
               max_flops: int | None, flops: int, keep_stages: bool) -> str:
    """Why the smallest network the constraints allow still misses a target, in one line."""
    hint = " (every stage keeps a block; allow empty stages to go further)" if keep_stages else ""
    if target is not None and count > target:
        return f"cannot keep only {target} block(s): at least {count} must stay{hint}"
    if max_params is not None and params > max_params:
        return (f"--max-params {human(max_params)} cannot be met: the smallest network this one "
                f"prunes to has {human(params)} parameters{hint}")
    return (f"--max-flops {human(max_flops or 0)} cannot be met: the smallest network this one "
            f"prunes to needs {human(flops)} FLOPs{hint}")


def removed_blocks(rows: Sequence[dict[str, Any]], kept: Sequence[str]) -> list[str]:
    """The rows' names not in ``kept``, in forward order."""
    keep = set(kept)
    return [r["name"] for r in sorted(rows, key=lambda r: r["position"]) if r["name"] not in keep]
