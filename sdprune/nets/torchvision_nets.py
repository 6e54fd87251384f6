"""torchvision's ResNets and MobileNetV2, with every residual block made a GatedBlock.

The torchvision modules are reused as they are (same layers, same initialisation); only
each residual block is re-wrapped as act(shortcut(x) + g * branch(x)) with the block's
own layers, and the first convolution accepts any number of input channels. Keyword
arguments go to torchvision's builder (``zero_init_residual``, ``width_mult``, ...).
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck

from sdprune.depth.block import GatedBlock
from sdprune.nets.registry import register


def gate_resnet_block(block: BasicBlock | Bottleneck) -> GatedBlock:
    """Re-wrap a torchvision residual block as a GatedBlock with the same layers."""
    layers = [block.conv1, block.bn1, nn.ReLU(inplace=True), block.conv2, block.bn2]
    if isinstance(block, Bottleneck):
        layers += [nn.ReLU(inplace=True), block.conv3, block.bn3]
    return GatedBlock(nn.Sequential(*layers), block.downsample, nn.ReLU())  # not in place: see GatedBlock


def _resnet(arch: str, num_classes: int, in_channels: int, **kwargs) -> nn.Module:
    model = getattr(tvm, arch)(weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:  # a new first convolution, initialised as torchvision initialises it
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for i, block in enumerate(stage):
            stage[i] = gate_resnet_block(block)
    return model


def _register_resnet(arch: str) -> None:
    @register(f"tv_{arch}", (3, 224, 224), f"torchvision {arch} with gated residual blocks")
    def build(num_classes: int, in_channels: int, **kwargs) -> nn.Module:
        return _resnet(arch, num_classes, in_channels, **kwargs)


for _arch in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
    _register_resnet(_arch)


@register("mobilenet_v2", (3, 224, 224), "torchvision MobileNetV2; each inverted residual with a skip is gated")
def mobilenet_v2(num_classes: int, in_channels: int, **kwargs) -> nn.Module:
    model = tvm.mobilenet_v2(weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:  # a new first convolution, initialised as torchvision initialises it
        first = model.features[0][0]
        model.features[0][0] = nn.Conv2d(in_channels, first.out_channels, 3, 2, 1, bias=False)
        nn.init.kaiming_normal_(model.features[0][0].weight, mode="fan_out")
    for i, block in enumerate(model.features):
        if isinstance(block, InvertedResidual) and block.use_res_connect:
            model.features[i] = GatedBlock(block.conv)
    return model
