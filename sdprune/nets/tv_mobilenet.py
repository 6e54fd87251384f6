"""torchvision's MobileNets as an sdprune family: every inverted residual with a skip
connection gated (its whole ``conv`` / ``block`` sequence is the branch, ending in a
BatchNorm), those that change shape left as they are. torchvision trains them without
stochastic depth: every prior survival is 1.

MobileNetV3's blocks are wrapped (``gate_residual_blocks`` gates a V3 someone built);
registering its variants is the MobileNetV3 adapter's remaining step.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor
from torchvision.models.mobilenetv2 import InvertedResidual as InvertedResidualV2
from torchvision.models.mobilenetv3 import InvertedResidual as InvertedResidualV3

from sdprune.depth.block import GatedBlock
from sdprune.nets.torchvision_nets import Family, register_family
from sdprune.nets.wrap import BlockWrapper, register_block

register_block(BlockWrapper(InvertedResidualV2, lambda b: GatedBlock(b.conv) if b.use_res_connect else None))
register_block(BlockWrapper(InvertedResidualV3, lambda b: GatedBlock(b.block) if b.use_res_connect else None))


def guess(state_dict: Mapping[str, Tensor]) -> list[str]:
    """MobileNetV2 when its classifier and inverted residuals are there (a cheap hint)."""
    return ["mobilenet_v2"] if {"classifier.1.weight", "features.1.conv.0.0.weight"} <= set(state_dict) else []


# "mobilenet_v2", not "tv_mobilenet_v2": the name runs and checkpoints already carry.
FAMILY = register_family(Family(
    "MobileNetV2", {"mobilenet_v2": "mobilenet_v2"}, guess,
    lambda arch: "torchvision MobileNetV2; each inverted residual with a skip is gated"))
