"""The structure of a gated network: its blocks in order, their layout, and removing them.

Every architecture exposes its prunable units as ``GatedBlock`` modules, so everything
here works on any registered network without knowing which one it is. These are the
structural operations both training (the learned-survival controller needs the layout)
and pruning (removal) build on, so they live beside the block, below both; so does the
FLOP count they and ``sdprune.nets.measure`` share.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from sdprune.depth.block import GatedBlock, PrunedBlock
from sdprune.errors import SdpruneError


def gated_blocks(model: nn.Module) -> list[tuple[str, GatedBlock]]:
    """The model's gated blocks in forward order, as (qualified name, module) pairs."""
    return list(_iter_gated(model))


def _iter_gated(model: nn.Module) -> Iterator[tuple[str, GatedBlock]]:
    for name, module in model.named_modules():
        if isinstance(module, GatedBlock):
            yield name, module


def remove_blocks(model: nn.Module, names: Iterable[str]) -> nn.Module:
    """Replace each named block by act(shortcut(x)), in place; returns the model.

    A block whose shortcut and activation are both identities becomes ``nn.Identity``;
    otherwise its shortcut (a projection keeps its parameters) and activation remain.
    The branch and its parameters leave the module tree.
    """
    names = list(names)
    blocks = dict(gated_blocks(model))
    missing = [n for n in names if n not in blocks]
    if missing:
        raise SdpruneError(f"no gated block named {missing[0]!r} in this model")
    for name in names:
        block = blocks[name]
        trivial = isinstance(block.shortcut, nn.Identity) and isinstance(block.act, nn.Identity)
        replacement = nn.Identity() if trivial else PrunedBlock(block.shortcut, block.act)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, replacement)
    return model


def all_block_names(model: nn.Module) -> list[str]:
    """Names of every residual block of the architecture, removed ones included, in forward order."""
    return [name for name, m in model.named_modules() if isinstance(m, (GatedBlock, PrunedBlock))]


def block_names(model: nn.Module) -> list[str]:
    """Names of the gated blocks still in the model, in forward order."""
    return [name for name, _ in gated_blocks(model)]


@torch.no_grad()
def forward_flops(model: nn.Module, input_shape: tuple[int, ...]) -> FlopCounterMode:
    """One eval-mode forward at batch 1 (a zero input on the model's device), counted by
    PyTorch's FlopCounterMode (convolutions and matmuls; a multiply-add counts as 2).

    Returns the counter: per-module counts and the total. The model's mode is kept.
    """
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
    return counter


def block_layout(model: nn.Module, input_shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """Structure of each gated block: stage, index in stage, transition, params, FLOPs.

    A stage is a run of consecutive blocks with the same output shape, so every
    architecture gets the same notion without naming its modules; a transition block
    changes the shape (removing it leaves its projection shortcut in place).
    """
    blocks = gated_blocks(model)
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = [b.register_forward_hook(_shape_hook(shapes, n)) for n, b in blocks]
    try:
        counter = forward_flops(model, input_shape)
    finally:
        for h in hooks:
            h.remove()
    counts = counter.get_flop_counts()
    root = type(model).__name__
    rows, stage, index, previous = [], -1, 0, None
    for position, (name, block) in enumerate(blocks):
        shape_in, shape_out = shapes[name]
        if shape_out != previous:
            stage, index = stage + 1, 0
        previous = shape_out
        rows.append({
            "name": name, "stage": stage, "index": index, "position": position,
            "transition": shape_in != shape_out,
            "survival": float(block.survival),
            "params": sum(p.numel() for p in block.branch.parameters()),
            "flops": int(sum(counts.get(f"{root}.{name}.branch", {}).values())),
            "block_flops": int(sum(counts.get(f"{root}.{name}", {}).values())),
        })
        index += 1
    total = int(counter.get_total_flops())
    for row in rows:
        row["model_flops"] = total
    return rows


def _shape_hook(store: dict, name: str) -> Callable[[nn.Module, tuple, Tensor], None]:
    def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
        store[name] = (tuple(args[0].shape[1:]), tuple(output.shape[1:]))
    return hook


@torch.no_grad()
def norm_values_per_image(model: nn.Module, input_shape: tuple[int, ...]) -> int | None:
    """The fewest values per channel a BatchNorm of ``model`` sees for one image (the area of
    the smallest feature map it normalises, 1 after global pooling); None without BatchNorm.

    One eval-mode forward at batch 1 (a zero input on the model's device); the mode is kept.
    """
    seen: list[int] = []
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append(args[0][0].numel() // args[0].shape[1]))
             for m in norms]
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return min(seen) if seen else None


def check_norm_batch(model: nn.Module, input_shape: tuple[int, ...], images: int, batch: str) -> None:
    """Refuse, before any work, training batches of ``images`` images that would leave a
    BatchNorm one value per channel: it cannot normalise a single value and PyTorch stops
    the run there ("Expected more than 1 value per channel"). ``batch`` names the batch
    for the message ("--batch-size 1")."""
    per_image = norm_values_per_image(model, input_shape)
    if per_image is not None and images * per_image < 2:
        side = "x".join(str(s) for s in input_shape[1:])
        raise SdpruneError(f"{batch} leaves BatchNorm one value per channel ({side} images reach a 1x1 feature "
                           f"map in this network), and BatchNorm needs at least 2: train on batches of at least "
                           f"{-(-2 // per_image)} images")
