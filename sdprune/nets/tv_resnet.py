"""torchvision's ResNets (ResNet-18 ... 152) as an sdprune family: every BasicBlock and
Bottleneck gated as relu(downsample(x) + bn2(conv2(relu(bn1(conv1(x)))))) (conv3 / bn3 in
a bottleneck), the branch's last BatchNorm taking a folded survival. torchvision trains
them without stochastic depth: every prior survival is 1.

The block wrapper also covers ResNeXt and wide ResNets (torchvision's ResNet class with
other widths), which only need registering here.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from sdprune.depth.block import GatedBlock
from sdprune.nets.torchvision_nets import Family, register_family
from sdprune.nets.wrap import BlockWrapper, register_block


def gate_resnet_block(block: BasicBlock | Bottleneck) -> GatedBlock:
    """A torchvision ResNet block as a GatedBlock with the same layers."""
    layers = [block.conv1, block.bn1, nn.ReLU(inplace=True), block.conv2, block.bn2]
    if isinstance(block, Bottleneck):
        layers += [nn.ReLU(inplace=True), block.conv3, block.bn3]
    return GatedBlock(nn.Sequential(*layers), block.downsample, nn.ReLU())  # not in place: see GatedBlock


register_block(BlockWrapper(BasicBlock, gate_resnet_block))
register_block(BlockWrapper(Bottleneck, gate_resnet_block))

# blocks per stage and bottleneck or not -> the torchvision ResNet (a cheap hint for detection)
_DEPTHS = {((2, 2, 2, 2), False): "tv_resnet18", ((3, 4, 6, 3), False): "tv_resnet34",
           ((3, 4, 6, 3), True): "tv_resnet50", ((3, 4, 23, 3), True): "tv_resnet101",
           ((3, 8, 36, 3), True): "tv_resnet152"}


def guess(state_dict: Mapping[str, Tensor]) -> list[str]:
    """The ResNet these keys look like (a cheap hint: the layout decides)."""
    keys = set(state_dict)
    if "fc.weight" not in keys:
        return []
    blocks = tuple(len({k.split(".")[1] for k in keys if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    name = _DEPTHS.get((blocks, any(".conv3." in k for k in keys)))
    return [name] if name else []


FAMILY = register_family(Family(
    "ResNet", {f"tv_resnet{d}": f"resnet{d}" for d in (18, 34, 50, 101, 152)}, guess,
    lambda arch: f"torchvision {arch} with gated residual blocks"))
