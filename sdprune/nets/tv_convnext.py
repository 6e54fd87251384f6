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

``convnext_cifar``: the same class at CIFAR size (widths 32/64/128/256, depths 2/2/6/2, a
patch-2 stem: feature maps 16/8/4/2 on 32-px images; ``patch_size=1`` keeps 32/16/8/4 at
about four times the compute), its own stochastic depth torchvision's linear rule up to
``stochastic_depth_prob`` 0.1 (recorded as the blocks' survivals, 1 / survival folded into
the layer scales; 0 builds the plain twin for direct use, ``create_model``). ``sdprune
train`` replaces those survivals with its ``--survival`` schedule (the fold stays, an
initial layer scale up to 1 / 0.9 times 0.1, where torchvision starts at 1e-6: see
CIFAR_LAYER_SCALE): ``--survival linear --p-last
0.9`` is the same rule to drop 0.1 (sdprune's counts the first block too), and only
``--survival none`` trains the plain twin, whatever ``stochastic_depth_prob`` says.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.convnext import CNBlock, CNBlockConfig, ConvNeXt, LayerNorm2d
from torchvision.ops.misc import Conv2dNormActivation

from sdprune.depth.block import GatedBlock
from sdprune.errors import SdpruneError
from sdprune.nets.registry import register
from sdprune.nets.torchvision_nets import Family, register_family, torchvision_builder
from sdprune.nets.wrap import BlockWrapper, gate_residual_blocks, register_block

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


CIFAR_SETTING = ((32, 64, 2), (64, 128, 2), (128, 256, 6), (256, None, 2))
# torchvision's layer scale starts at 1e-6, tuned for AdamW, whose steps do not shrink with
# the gradient. Under SGD (every sdprune run) it barely moves: trained 1 epoch on CIFAR-10
# from 1e-6, every block's branch was 1e-4 of its input, a network of stem, downsamplers and
# head with 12 silent blocks. CaiT's rule for the initial layer scale (Touvron et al. 2021,
# 0.1 up to depth 18) fits 12 blocks; BENCHMARKS.md (B7, accuracy) says what SGD made of it.
CIFAR_LAYER_SCALE = 0.1


@register("convnext_cifar", (3, 32, 32),
          "torchvision's ConvNeXt at CIFAR size (32-256 wide, 2/2/6/2 blocks, patch-2 stem, layer scale 0.1), "
          "drop rate up to 0.1")
def convnext_cifar(num_classes: int, in_channels: int = 3, stochastic_depth_prob: float = 0.1, patch_size: int = 2,
                   block_setting: Sequence[Any] = CIFAR_SETTING, layer_scale: float = CIFAR_LAYER_SCALE,
                   **kwargs: Any) -> nn.Module:
    """A narrow ConvNeXt for 32-px images: torchvision's class with ``block_setting``, its
    4x4 stride-4 stem (56 px from 224) made ``patch_size`` square (16 px from 32), and its
    layer scale starting at ``layer_scale`` (0.1, not 1e-6: see CIFAR_LAYER_SCALE).
    ``stochastic_depth_prob`` sets the built-in survivals (0: the plain twin); ``sdprune
    train`` replaces them with its ``--survival`` schedule (module doc)."""
    if not isinstance(patch_size, int) or patch_size < 1:
        raise SdpruneError(f"convnext_cifar's patch_size is a positive whole number of pixels, not {patch_size!r}")
    if isinstance(layer_scale, bool) or not isinstance(layer_scale, (int, float)) or not 0 < layer_scale < math.inf:
        raise SdpruneError(f"convnext_cifar's layer_scale is a number > 0, not {layer_scale!r}")
    if not 0.0 <= stochastic_depth_prob < 1.0:
        raise SdpruneError(f"convnext_cifar's stochastic_depth_prob is a drop rate in [0, 1), "
                           f"not {stochastic_depth_prob!r}")
    model = build("convnext_cifar", num_classes, block_setting=block_setting,
                  stochastic_depth_prob=stochastic_depth_prob, layer_scale=layer_scale, **kwargs)
    norm = kwargs.get("norm_layer") or partial(LayerNorm2d, eps=1e-6)  # ConvNeXt's own default
    stem = Conv2dNormActivation(in_channels, model.features[0][0].out_channels, kernel_size=patch_size,
                                stride=patch_size, padding=0, norm_layer=norm, activation_layer=None, bias=True)
    init_conv(stem[0])
    model.features[0] = stem
    return gate_residual_blocks(model)
