"""CIFAR-style ResNets (He et al. 2016, section 4.2) as used by the stochastic-depth paper.

depth = 6n + 2: a 3x3 stem, three stages of n basic blocks with 16, 32 and 64 channels,
global average pooling and a linear head. Where a stage halves the resolution and
doubles the width, the shortcut is the paper's parameter-free one ("pad": subsample by 2
and zero-pad the new channels) or a 1x1 projection ("conv").
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from sdprune.depth.block import GatedBlock
from sdprune.errors import SdpruneError
from sdprune.nets.registry import register


class PadShortcut(nn.Module):
    """Subsample by ``stride`` and zero-pad channels: option A of He et al."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


def basic_block(cin: int, cout: int, stride: int, shortcut: str) -> GatedBlock:
    branch = nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
    )
    proj: nn.Module | None = None
    if stride != 1 or cin != cout:
        if shortcut == "pad":
            proj = PadShortcut(stride, cout - cin)
        else:
            proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    return GatedBlock(branch, proj, nn.ReLU())  # not in place: a dropped block applies it to x itself


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3,
                 widths: tuple[int, int, int] = (16, 32, 64), shortcut: str = "pad") -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise SdpruneError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        if shortcut not in ("pad", "conv"):
            raise SdpruneError(f"shortcut must be 'pad' or 'conv', got {shortcut!r}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
        )
        stages, cin = [], widths[0]
        for i, width in enumerate(widths):
            blocks = [basic_block(cin if j == 0 else width, width,
                                  2 if (i > 0 and j == 0) else 1, shortcut) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))


def _register_depth(name: str, depth: int, note: str) -> None:
    @register(name, (3, 32, 32), f"CIFAR-style ResNet, depth {depth} ({note})")
    def build(num_classes: int, in_channels: int, **kwargs) -> nn.Module:
        return CifarResNet(depth, num_classes, in_channels, **kwargs)


for _depth in (20, 32, 44, 56, 110, 1202):
    _register_depth(f"resnet{_depth}", _depth, f"3 stages x {(_depth - 2) // 6} basic blocks")
_register_depth("cifar_resnet152", 152, "the paper's SVHN network, 3 stages x 25 blocks; not torchvision's ResNet-152")
