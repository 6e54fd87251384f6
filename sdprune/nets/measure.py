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


def size_of(model: nn.Module, input_shape) -> dict[str, int]:
    """{"params", "flops"} of a network at one input (what pruning shrinks)."""
    return {"params": count_params(model), "flops": count_flops(model, tuple(input_shape))}
