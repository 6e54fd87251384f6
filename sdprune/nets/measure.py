"""Size and cost of a network: parameters and FLOPs (via torch.utils.flop_counter)."""

from __future__ import annotations

from torch import nn

from sdprune.depth.structure import forward_flops


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN statistics are not counted)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """FLOPs of one eval-mode forward pass at batch 1 (a multiply-add counts as 2).

    Counted by PyTorch's own FlopCounterMode (convolutions and matmuls).
    """
    return int(forward_flops(model, input_shape).get_total_flops())


def size_of(model: nn.Module, input_shape: tuple[int, ...] | list[int]) -> dict[str, int]:
    """{"params", "flops"} of a network at one input (what pruning shrinks)."""
    return {"params": count_params(model), "flops": count_flops(model, tuple(input_shape))}
