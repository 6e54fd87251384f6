"""torchvision's ConvNeXt (tiny, small, base, large) as an sdprune family.

Every ``CNBlock`` is gated: x + g * branch(x), the branch being the block's own
depthwise conv, LayerNorm, MLP and layer scale (``features.1.0.layer_scale`` becomes
``features.1.0.branch.layer_scale.scale``); shortcut and activation are identities, so a
removed block leaves the module tree altogether, and the downsampling layers between
stages (``features.2``, ...) are no block's and stay. torchvision trains each CNBlock
with ``StochasticDepth(p, "row")``, p rising linearly with the block's index up to the
variant's ``stochastic_depth_prob`` (0.1 tiny ... 0.5 large): the gate replaces it, the
prior survival is 1 - p and 1 / (1 - p) is folded into the layer scale
(``sdprune.nets.wrap``), so the gated block computes torchvision's function exactly.

A custom configuration goes through torchvision's own constructor: ``block_setting``
(``CNBlockConfig`` objects, or [input_channels, out_channels, num_layers] lists, which a
checkpoint can record) and any ``ConvNeXt`` argument, with ``ConvNeXt``'s defaults.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.convnext import CNBlock, CNBlockConfig, ConvNeXt

from sdprune.depth.block import GatedBlock
from sdprune.errors import SdpruneError
from sdprune.nets.torchvision_nets import Family, register_family, torchvision_builder
from sdprune.nets.wrap import BlockWrapper, register_block

VARIANTS = ("tiny", "small", "base", "large")


class LayerScale(nn.Module):
    """CNBlock's per-channel output scale, as a layer of the branch (the same Parameter)."""

    def __init__(self, scale: nn.Parameter) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * x


def gate_cnblock(block: CNBlock) -> GatedBlock:
    """A CNBlock as x + g * layer_scale * block(x) (its StochasticDepth replaced by the gate)."""
    return GatedBlock(nn.Sequential(OrderedDict(block=block.block, layer_scale=LayerScale(block.layer_scale))))


register_block(BlockWrapper(CNBlock, gate_cnblock, fold=lambda gated: ("branch.layer_scale.scale",)))


def build(arch: str, num_classes: int, block_setting: Sequence[Any] | None = None, **kwargs: Any) -> nn.Module:
    """torchvision's ``arch``, or with ``block_setting`` torchvision's ``ConvNeXt`` itself."""
    if block_setting is None:
        return torchvision_builder(arch, num_classes, **kwargs)
    return ConvNeXt([_config(c) for c in block_setting], num_classes=num_classes, **kwargs)


def _config(setting: Any) -> CNBlockConfig:
    if isinstance(setting, CNBlockConfig):
        return setting
    if isinstance(setting, Sequence) and len(setting) == 3:
        return CNBlockConfig(*setting)
    raise SdpruneError(f"a ConvNeXt block_setting entry is a CNBlockConfig or [input_channels, out_channels, "
                       f"num_layers], not {setting!r}")


def init_conv(conv: nn.Conv2d) -> None:
    """ConvNeXt's initialisation (its constructor's): truncated normal, std 0.02, zero bias."""
    nn.init.trunc_normal_(conv.weight, std=0.02)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


# widths of the stem (and so of the first stage) -> the variants with 27 blocks in stage 3
_WIDE = {96: "tv_convnext_small", 128: "tv_convnext_base", 192: "tv_convnext_large"}


def guess(state_dict: Mapping[str, Tensor]) -> list[str]:
    """The ConvNeXt these weights look like, from stage 3's depth and the stem's width."""
    keys = set(state_dict)
    if "features.1.0.layer_scale" not in keys:
        return []
    depth = len({k.split(".")[2] for k in keys if k.startswith("features.5.") and k.endswith(".layer_scale")})
    if depth == 9:
        return ["tv_convnext_tiny"]
    stem = state_dict.get("features.0.0.weight")
    width = int(stem.shape[0]) if isinstance(stem, torch.Tensor) else None
    return [_WIDE[width]] if depth == 27 and width in _WIDE else []


FAMILY = register_family(Family(
    "ConvNeXt", {f"tv_convnext_{v}": f"convnext_{v}" for v in VARIANTS}, guess,
    lambda arch: f"torchvision {arch}; every CNBlock gated, prior survival 1 - its drop rate",
    build=build, init_conv=init_conv))
