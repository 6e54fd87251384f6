"""torchvision's EfficientNet (B0 ... B7) and EfficientNetV2 (S, M, L) as sdprune families.

Every ``MBConv`` and ``FusedMBConv`` with a residual connection (stride 1, as many channels
out as in) is gated: x + g * block(x), the branch being the block's own ``block``
sequence, which ends in its projection's BatchNorm; the blocks that change shape (the
first of most stages) are no residual and stay as they are. torchvision trains every block
with ``StochasticDepth(p, "row")``, p = stochastic_depth_prob * i / n for the i-th of the
network's n blocks (0.2 for every variant): the gate replaces it, the prior survival is
1 - p, and 1 / (1 - p) is folded into that BatchNorm (``sdprune.nets.wrap``), so the gated
block computes torchvision's function exactly. V2's first-stage FusedMBConv (no expansion)
ends in its SiLU, after which no layer's weights scale the output: its branch gets an
``OutputScale`` (a scalar buffer, 1 in torchvision's function) for the fold, the one tensor
sdprune adds (``sdprune.nets.layout``: a made key).

A custom configuration goes through torchvision's own ``EfficientNet`` constructor:
``inverted_residual_setting`` (``MBConvConfig`` / ``FusedMBConvConfig`` objects, or lists
["MBConv" or "FusedMBConv", expand_ratio, kernel, stride, input_channels, out_channels,
num_layers], which a checkpoint can record) and any ``EfficientNet`` argument, with the
variant's dropout, BatchNorm and last channel as its builder has them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.efficientnet import EfficientNet, FusedMBConv, FusedMBConvConfig, MBConv, MBConvConfig

from sdprune.depth.block import GatedBlock, output_scale
from sdprune.errors import SdpruneError
from sdprune.nets.torchvision_nets import Family, register_family, torchvision_builder
from sdprune.nets.wrap import BlockWrapper, register_block


class OutputScale(nn.Module):
    """A constant scale at the end of a branch that ends in an activation (V2's FusedMBConv
    without expansion: SiLU(BN(conv(x))), no layer whose weights scale its output), where
    sdprune folds survival. 1 in torchvision's function; a buffer: not trained."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def gate_mbconv(block: MBConv | FusedMBConv) -> GatedBlock | None:
    """An MBConv / FusedMBConv with a residual connection as x + g * block(x) (its
    StochasticDepth replaced by the gate; an ``OutputScale`` after a final activation);
    None for one that changes shape."""
    if not block.use_res_connect:
        return None
    if isinstance(list(block.block.modules())[-1], nn.modules.batchnorm._BatchNorm):
        return GatedBlock(block.block)
    return GatedBlock(nn.Sequential(*block.block, OutputScale()))


def fold(gated: GatedBlock) -> tuple[str, ...]:
    """Where survival folds: the projection's BatchNorm, or the ``OutputScale``."""
    last = len(gated.branch) - 1
    return (f"branch.{last}.scale",) if isinstance(gated.branch[last], OutputScale) else output_scale(gated)


register_block(BlockWrapper(MBConv, gate_mbconv, fold=fold))
register_block(BlockWrapper(FusedMBConv, gate_mbconv, fold=fold))

_EPS3 = partial(nn.BatchNorm2d, eps=1e-3)
_B5 = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)
# torchvision's name -> (dropout, BatchNorm, last channel, eval side) as its builder and weights have them
_V1 = {"efficientnet_b0": (0.2, None, None, 224), "efficientnet_b1": (0.2, None, None, 240),
       "efficientnet_b2": (0.3, None, None, 288), "efficientnet_b3": (0.3, None, None, 300),
       "efficientnet_b4": (0.4, None, None, 380), "efficientnet_b5": (0.4, _B5, None, 456),
       "efficientnet_b6": (0.5, _B5, None, 528), "efficientnet_b7": (0.5, _B5, None, 600)}
_V2 = {"efficientnet_v2_s": (0.2, _EPS3, 1280, 384), "efficientnet_v2_m": (0.3, _EPS3, 1280, 480),
       "efficientnet_v2_l": (0.4, _EPS3, 1280, 480)}
_CONFIGS = {"MBConv": MBConvConfig, "FusedMBConv": FusedMBConvConfig}


def build(arch: str, num_classes: int, inverted_residual_setting: Sequence[Any] | None = None,
          **kwargs: Any) -> nn.Module:
    """torchvision's ``arch``, or with ``inverted_residual_setting`` its ``EfficientNet``
    itself, with the variant's dropout, BatchNorm and last channel unless ``kwargs`` say."""
    if inverted_residual_setting is None:
        return torchvision_builder(arch, num_classes, **kwargs)
    dropout, norm, last, _ = {**_V1, **_V2}[arch]
    kwargs = {"dropout": dropout, "norm_layer": norm, "last_channel": last, **kwargs}
    return EfficientNet([_config(c) for c in inverted_residual_setting], num_classes=num_classes, **kwargs)


def _config(setting: Any) -> MBConvConfig | FusedMBConvConfig:
    if isinstance(setting, (MBConvConfig, FusedMBConvConfig)):
        return setting
    if isinstance(setting, Sequence) and len(setting) == 7 and setting[0] in _CONFIGS:
        return _CONFIGS[setting[0]](*setting[1:])
    raise SdpruneError(f"an EfficientNet inverted_residual_setting entry is an MBConvConfig, a FusedMBConvConfig or "
                       f"[\"MBConv\" or \"FusedMBConv\", expand_ratio, kernel, stride, input_channels, out_channels, "
                       f"num_layers], not {setting!r}")


# blocks per stage -> the variants (B1 and B2 differ only in width: the layout decides)
_DEPTHS = {(1, 2, 2, 3, 3, 4, 1): ["b0"], (2, 3, 3, 4, 4, 5, 2): ["b1", "b2"], (2, 3, 3, 5, 5, 6, 2): ["b3"],
           (2, 4, 4, 6, 6, 8, 2): ["b4"], (3, 5, 5, 7, 7, 9, 3): ["b5"], (3, 6, 6, 8, 8, 11, 3): ["b6"],
           (4, 7, 7, 10, 10, 13, 4): ["b7"], (2, 4, 4, 6, 9, 15): ["v2_s"], (3, 5, 5, 7, 14, 18, 5): ["v2_m"],
           (4, 7, 7, 10, 19, 25, 7): ["v2_l"]}


def guess(state_dict: Mapping[str, Tensor]) -> list[str]:
    """The EfficientNets (V1 or V2) these keys look like, from their blocks per stage (a cheap hint)."""
    keys = [k for k in state_dict if k.startswith("features.")]
    if "features.1.0.block.0.0.weight" not in state_dict or "classifier.1.weight" not in state_dict:
        return []
    blocks: dict[int, set[str]] = {}
    for key in keys:
        stage, block = key.split(".")[1:3]
        blocks.setdefault(int(stage), set()).add(block)
    depths = tuple(len(blocks[i]) for i in range(1, max(blocks)))  # the stem and the last conv are no stage
    return [f"tv_efficientnet_{v}" for v in _DEPTHS.get(depths, [])]


def _describe(arch: str) -> str:
    return f"torchvision {arch}; every MBConv with a residual gated, prior survival 1 - its drop rate"


FAMILY = register_family(Family(
    "EfficientNet", {f"tv_{arch}": arch for arch in _V1}, lambda sd: [n for n in guess(sd) if "_v2_" not in n],
    _describe, build=build,
    sides={arch: v[3] for arch, v in _V1.items()}))
FAMILY_V2 = register_family(Family(
    "EfficientNetV2", {f"tv_{arch}": arch for arch in _V2}, lambda sd: [n for n in guess(sd) if "_v2_" in n],
    lambda arch: f"torchvision {arch}; every FusedMBConv / MBConv with a residual gated, prior survival "
                 "1 - its drop rate", build=build, sides={arch: v[3] for arch, v in _V2.items()}))
