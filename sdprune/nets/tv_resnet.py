"""torchvision's ResNets as an sdprune family: ResNet-18 ... 152, ResNeXt (50_32x4d,
101_32x8d, 101_64x4d) and wide ResNets (50_2, 101_2), all torchvision's ``ResNet`` class
with other block counts, groups and widths. Every BasicBlock and Bottleneck is gated as
relu(downsample(x) + bn2(conv2(relu(bn1(conv1(x)))))) (conv3 / bn3 in a bottleneck), the
branch's last BatchNorm taking a folded survival. torchvision trains them without
stochastic depth: every prior survival is 1.

A custom configuration goes through torchvision's own constructor: ``layers`` (blocks per
stage) builds ``ResNet`` with the variant's block and its groups and width per group,
which any ``ResNet`` argument overrides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from sdprune.depth.block import GatedBlock
from sdprune.nets.torchvision_nets import Family, register_family, torchvision_builder
from sdprune.nets.wrap import BlockWrapper, register_block


def gate_resnet_block(block: BasicBlock | Bottleneck) -> GatedBlock:
    """A torchvision ResNet block as a GatedBlock with the same layers."""
    layers = [block.conv1, block.bn1, nn.ReLU(inplace=True), block.conv2, block.bn2]
    if isinstance(block, Bottleneck):
        layers += [nn.ReLU(inplace=True), block.conv3, block.bn3]
    return GatedBlock(nn.Sequential(*layers), block.downsample, nn.ReLU())  # not in place: see GatedBlock


register_block(BlockWrapper(BasicBlock, gate_resnet_block))
register_block(BlockWrapper(Bottleneck, gate_resnet_block))

# torchvision's name -> its block, blocks per stage, groups and width per group (its builder's)
_ARCHS: dict[str, tuple[type[nn.Module], tuple[int, ...], int, int]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), 1, 64), "resnet34": (BasicBlock, (3, 4, 6, 3), 1, 64),
    "resnet50": (Bottleneck, (3, 4, 6, 3), 1, 64), "resnet101": (Bottleneck, (3, 4, 23, 3), 1, 64),
    "resnet152": (Bottleneck, (3, 8, 36, 3), 1, 64),
    "resnext50_32x4d": (Bottleneck, (3, 4, 6, 3), 32, 4), "resnext101_32x8d": (Bottleneck, (3, 4, 23, 3), 32, 8),
    "resnext101_64x4d": (Bottleneck, (3, 4, 23, 3), 64, 4),
    "wide_resnet50_2": (Bottleneck, (3, 4, 6, 3), 1, 128), "wide_resnet101_2": (Bottleneck, (3, 4, 23, 3), 1, 128),
}


def build(arch: str, num_classes: int, layers: Sequence[int] | None = None, **kwargs: Any) -> nn.Module:
    """torchvision's ``arch``, or with ``layers`` torchvision's ``ResNet`` with the variant's
    block, groups and width per group (``kwargs`` override them)."""
    if layers is None:
        return torchvision_builder(arch, num_classes, **kwargs)
    block, _, groups, width = _ARCHS[arch]
    kwargs = {"groups": groups, "width_per_group": width, **kwargs}
    return ResNet(block, list(layers), num_classes=num_classes, **kwargs)


def guess(state_dict: Mapping[str, Tensor]) -> list[str]:
    """The ResNets these keys look like (a cheap hint: the layout decides): every variant
    with these blocks per stage, the one whose groups and widths fit layer1's first 3x3
    convolution first."""
    keys = set(state_dict)
    if "fc.weight" not in keys:
        return []
    blocks = tuple(len({k.split(".")[1] for k in keys if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    bottleneck = any(".conv3." in k for k in keys)
    found = [a for a, (b, depth, _, _) in _ARCHS.items() if depth == blocks and (b is Bottleneck) == bottleneck]
    conv = state_dict.get("layer1.0.conv2.weight")
    if isinstance(conv, Tensor) and conv.dim() == 4 and conv.shape[1] > 0:
        groups = int(conv.shape[0]) // int(conv.shape[1])
        found.sort(key=lambda a: _ARCHS[a][2:] != (groups, int(conv.shape[0]) // max(groups, 1)))
    return [f"tv_{a}" for a in found]


FAMILY = register_family(Family(
    "ResNet", {f"tv_{arch}": arch for arch in _ARCHS}, guess,
    lambda arch: f"torchvision {arch} with gated residual blocks", build=build))
