"""Size and cost of a network: parameters and FLOPs (via torch.utils.flop_counter)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN statistics are not counted)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """FLOPs of one eval-mode forward pass at batch 1 (a multiply-add counts as 2).

    Counted by PyTorch's own FlopCounterMode (convolutions and matmuls).
    """
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros(1, *input_shape, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


@torch.no_grad()
def block_costs(model: nn.Module, input_shape: tuple[int, int, int]) -> list[dict[str, int]]:
    """FLOPs and parameters of each gated block's branch (what removing it saves).

    One counted forward pass; FlopCounterMode attributes FLOPs to module names.
    """
    from sdprune.layers import gated_blocks

    blocks = gated_blocks(model)
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, *input_shape, device=device))
    model.train(was_training)
    counts = counter.get_flop_counts()
    rows = []
    for name, block in blocks:
        flops = _module_flops(counts, f"{name}.branch")
        rows.append({"flops": flops, "params": count_params(block.branch)})
    return rows


def _module_flops(counts: dict, suffix: str) -> int:
    # FlopCounterMode keys modules by their path from the root, prefixed with "Global" and
    # the root's name depending on the torch version: match on the path suffix.
    for key, per_op in counts.items():
        if key == suffix or key.endswith("." + suffix):
            return int(sum(per_op.values()))
    return 0
