"""torchvision's ResNets and MobileNetV2, with every residual block made a GatedBlock.

The torchvision modules are reused as they are (same layers, same initialisation); only
each residual block is re-wrapped as act(shortcut(x) + g * branch(x)) with the block's
own layers (``sdprune.nets.wrap.gate_residual_blocks``), and the first convolution
accepts any number of input channels. Keyword arguments go to torchvision's builder
(``zero_init_residual``, ``width_mult``, ...). The weight converter
(``sdprune.nets.convert``) builds its key mapping from these same two steps.
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from sdprune.nets.registry import register
from sdprune.nets.wrap import gate_residual_blocks

# sdprune's name -> torchvision's: the architectures whose torchvision weights sdprune adopts.
TORCHVISION_ARCHS = {f"tv_resnet{d}": f"resnet{d}" for d in (18, 34, 50, 101, 152)} | {
    "mobilenet_v2": "mobilenet_v2"}


def torchvision_model(arch: str, num_classes: int, in_channels: int, **kwargs) -> nn.Module:
    """torchvision's ``arch`` (its own name, e.g. "resnet18"), not gated, with fresh weights
    and a first convolution for ``in_channels``, initialised as torchvision initialises it."""
    model = getattr(tvm, arch)(weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        if arch == "mobilenet_v2":
            first = model.features[0][0]
            model.features[0][0] = nn.Conv2d(in_channels, first.out_channels, 3, 2, 1, bias=False)
            nn.init.kaiming_normal_(model.features[0][0].weight, mode="fan_out")
        else:
            model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def _register(name: str, arch: str, description: str) -> None:
    @register(name, (3, 224, 224), description)
    def build(num_classes: int, in_channels: int, **kwargs) -> nn.Module:
        return gate_residual_blocks(torchvision_model(arch, num_classes, in_channels, **kwargs))


for _name, _arch in TORCHVISION_ARCHS.items():
    _register(_name, _arch, "torchvision MobileNetV2; each inverted residual with a skip is gated"
              if _arch == "mobilenet_v2" else f"torchvision {_arch} with gated residual blocks")
