"""Cutting: remove gated blocks from a network for real (the module tree shrinks)."""

from __future__ import annotations

from typing import Iterable

from torch import nn

from sdprune.errors import SdpruneError
from sdprune.layers import PrunedBlock, gated_blocks


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


def block_names(model: nn.Module) -> list[str]:
    """Names of the gated blocks still in the model, in forward order."""
    return [name for name, _ in gated_blocks(model)]


__all__ = ["remove_blocks", "block_names"]
