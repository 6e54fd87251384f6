"""Survival schedules: the initial p_l of every block, and reading / writing them on a model.

``linear`` is the paper's rule p_l = 1 - (l / L)(1 - p_L); ``uniform`` gives every block
p_L; ``none`` is the plain baseline (p = 1 on the same code path); ``learned`` starts
from the linear rule and adapts during training (``sdprune.depth.learned``). An adopted
run (nothing trained) records ``prior`` (``sdprune.choices.PRIOR``) when its network keeps
the survivals its source was trained with.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from sdprune.choices import SCHEDULES
from sdprune.depth.structure import gated_blocks
from sdprune.errors import SdpruneError


def survival_schedule(name: str, num_blocks: int, p_last: float = 0.5) -> list[float]:
    """Initial survival probabilities p_1..p_L for a schedule (the rules: module doc)."""
    if name not in SCHEDULES:
        raise SdpruneError(f"unknown survival schedule {name!r}; choose from {', '.join(SCHEDULES)}")
    if not 0.0 < p_last <= 1.0:
        raise SdpruneError(f"--p-last must be in (0, 1], got {p_last}")
    if name == "none":
        return [1.0] * num_blocks
    if name == "uniform":
        return [p_last] * num_blocks
    return [1.0 - (l / num_blocks) * (1.0 - p_last) for l in range(1, num_blocks + 1)]


def get_survival(model: nn.Module) -> list[float]:
    """The survival probability of each gated block, in forward order."""
    return [float(block.survival) for _, block in gated_blocks(model)]


def set_survival(model: nn.Module, survival: Sequence[float], keep_function: bool = False) -> None:
    """Write survival probabilities into the blocks (they scale the branch in eval mode).

    ``keep_function``: the network goes on computing what it computed (a trained network
    given another schedule, as a retrofit does): a block moved from s to s' has its branch's
    output scale (``GatedBlock.fold_keys``) multiplied by s / s', so s' * branch' = s * branch
    in eval (training with the gate open then computes (s / s') * branch: from s = 1, the
    inverted convention torchvision trains with). No block keeps its branch at survival 0."""
    blocks = gated_blocks(model)
    if len(blocks) != len(survival):
        raise ValueError(f"{len(survival)} survival values for {len(blocks)} blocks")
    if keep_function:  # refuse before any block moves: an error leaves the model as it was
        for (name, block), p in zip(blocks, survival):
            if _as_float32(p) == 0.0 and float(block.survival) != 0.0:
                raise SdpruneError(f"survival 0 for {name} closes it: its function cannot be kept")
    for (name, block), p in zip(blocks, survival):
        if keep_function:
            _refold(block, float(p))
        block.survival.fill_(float(p))


def _as_float32(p: float) -> float:
    """``p`` as the float32 survival eval multiplies by."""
    return float(torch.tensor(float(p), dtype=torch.float32))


@torch.no_grad()
def _refold(block: nn.Module, survival: float) -> None:
    old = float(block.survival)
    new = _as_float32(survival)
    if new == old:  # nothing moves: the tensors stay exactly as they are
        return
    tensors = dict(block.state_dict(keep_vars=True))
    for key in block.fold_keys():
        tensors[key].mul_(old / new)
