"""torchvision's MobileNets (V2; V3 small and large) as sdprune families: every inverted
residual with a skip connection gated (its whole ``conv`` / ``block`` sequence is the
branch, ending in a BatchNorm), those that change shape left as they are. torchvision
trains them without stochastic depth: every prior survival is 1.

A custom MobileNetV3 goes through torchvision's own constructor: ``inverted_residual_setting``
(``InvertedResidualConfig`` objects, or lists of its arguments [input_channels, kernel,
expanded_channels, out_channels, use_se, activation ("RE" or "HS"), stride, dilation] with
an optional width_mult, which a checkpoint can record) and any ``MobileNetV3`` argument;
``last_channel`` defaults to the variant's (1024 small, 1280 large).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torchvision.models.mobilenetv2 import InvertedResidual as InvertedResidualV2
from torchvision.models.mobilenetv3 import InvertedResidual as InvertedResidualV3
from torchvision.models.mobilenetv3 import InvertedResidualConfig, MobileNetV3

from sdprune.depth.block import GatedBlock
from sdprune.errors import SdpruneError
from sdprune.nets.torchvision_nets import Family, register_family, torchvision_builder
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

_LAST_CHANNEL = {"mobilenet_v3_small": 1024, "mobilenet_v3_large": 1280}  # their builders' (no reduced tail)
_V3_FEATURES = {13: "tv_mobilenet_v3_small", 17: "tv_mobilenet_v3_large"}  # stem, blocks, last conv


def build_v3(arch: str, num_classes: int, inverted_residual_setting: Sequence[Any] | None = None,
             **kwargs: Any) -> nn.Module:
    """torchvision's ``arch``, or with ``inverted_residual_setting`` its ``MobileNetV3`` itself."""
    if inverted_residual_setting is None:
        return torchvision_builder(arch, num_classes, **kwargs)
    kwargs.setdefault("last_channel", _LAST_CHANNEL[arch])
    return MobileNetV3([_v3_config(c) for c in inverted_residual_setting], num_classes=num_classes, **kwargs)


def _v3_config(setting: Any) -> InvertedResidualConfig:
    if isinstance(setting, InvertedResidualConfig):
        return setting
    if isinstance(setting, Sequence) and len(setting) in (8, 9):
        return InvertedResidualConfig(*setting, *([1.0] if len(setting) == 8 else []))
    raise SdpruneError(f"a MobileNetV3 inverted_residual_setting entry is an InvertedResidualConfig or "
                       f"[input_channels, kernel, expanded_channels, out_channels, use_se, activation, stride, "
                       f"dilation], not {setting!r}")


def guess_v3(state_dict: Mapping[str, Tensor]) -> list[str]:
    """MobileNetV3 small or large, from the number of its feature layers (a cheap hint)."""
    if "features.1.block.0.0.weight" not in state_dict or "classifier.3.weight" not in state_dict:
        return []
    layers = len({k.split(".")[1] for k in state_dict if k.startswith("features.")})
    return [_V3_FEATURES[layers]] if layers in _V3_FEATURES else []


FAMILY_V3 = register_family(Family(
    "MobileNetV3", {f"tv_{arch}": arch for arch in _LAST_CHANNEL}, guess_v3,
    lambda arch: f"torchvision {arch}; each inverted residual with a skip is gated", build=build_v3))
