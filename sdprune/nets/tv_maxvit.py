"""torchvision's MaxViT (t) as an sdprune family.

A ``MaxVitLayer`` is an MBConv, a window-attention layer and a grid-attention layer in
sequence; the layer as a whole has no residual connection, its three parts do, and those
are gated, five units per layer:

  * ``MBconv``: proj(x) + g * layers(x), as a block of its own (a ResNet-style unit: the
    first MBConv of each stage halves the resolution and widens, and its projection
    shortcut, average pooling and a 1x1 convolution, stays when the unit is removed);
  * ``window_attention`` and ``grid_attention``: each two residual branches, attention
    and MLP, each its own unit (the transformers' unit and why: ``tv_vit``; README,
    "Transformers: the unit is the branch"). torchvision adds them inside the
    partitioned layout (B, groups, P*P, C); partition and departition are exact inverse
    permutations, so each branch here maps (B, C, H, W) to itself,
    departition(branch(partition(x))): the same values (one extra pair of permutations
    per branch), and every unit of a stage has the stage's shape, as ``block_layout``'s
    stages expect.

Not gated: the stem, the classifier, and nothing else has a residual connection.
torchvision's drop rate rises linearly over the layers (0 to ``stochastic_depth_prob``,
0.2 for maxvit_t) and each layer's five units share it: prior survival 1 - p, 1 / (1 - p)
folded into the MBConv's last convolution, the attention's ``merge`` projection and the
MLP's last Linear. The MBConvs keep their BatchNorm (healing applies).

A custom configuration goes through torchvision's own constructor: any ``MaxVit``
argument (``input_size``, ``stem_channels``, ``block_channels``, ``block_layers``,
``head_dim``, ``partition_size``, ...) overrides the variant's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn
from torchvision.models.maxvit import MaxVit, MBConv, PartitionAttentionLayer

from sdprune.depth.block import GatedBlock
from sdprune.nets.torchvision_nets import Family, register_family, torchvision_builder
from sdprune.nets.wrap import BlockWrapper, register_block

VARIANTS: dict[str, dict[str, Any]] = {"maxvit_t": {
    "input_size": (224, 224), "stem_channels": 64, "block_channels": [64, 128, 256, 512],
    "block_layers": [2, 2, 5, 2], "head_dim": 32, "stochastic_depth_prob": 0.2, "partition_size": 7}}
_SHAPE_ARGS = ("input_size", "stem_channels", "block_channels", "block_layers", "head_dim", "partition_size")


class Partition(nn.Module):
    """(B, C, H, W) -> (B, groups, P*P, C): the layer's window or grid partition (its own ops)."""

    def __init__(self, layer: PartitionAttentionLayer) -> None:
        super().__init__()
        self.p = layer.p
        self.op, self.swap = layer.partition_op, layer.partition_swap

    def forward(self, x: Tensor) -> Tensor:
        return self.swap(self.op(x, self.p))


class Departition(nn.Module):
    """The inverse of ``Partition``: back to (B, C, H, W)."""

    def __init__(self, layer: PartitionAttentionLayer) -> None:
        super().__init__()
        self.p = layer.p
        self.groups = (layer.grid_size[0] // layer.p, layer.grid_size[1] // layer.p)
        self.op, self.swap = layer.departition_op, layer.departition_swap

    def forward(self, x: Tensor) -> Tensor:
        return self.op(self.swap(x), self.p, *self.groups)


def gate_mbconv(block: MBConv) -> GatedBlock:
    """An MBConv as proj(x) + g * layers(x) (its StochasticDepth replaced by the gate)."""
    return GatedBlock(block.layers, shortcut=block.proj)


def gate_partition_layer(layer: PartitionAttentionLayer) -> nn.Module:
    """A partition attention layer as its two gated branches, each from and to (B, C, H, W)."""
    def unit(name: str, sublayer: nn.Module) -> GatedBlock:
        return GatedBlock(nn.Sequential(OrderedDict(
            [("partition", Partition(layer)), (name, sublayer), ("departition", Departition(layer))])))
    return nn.Sequential(OrderedDict(attn=unit("attn_layer", layer.attn_layer), mlp=unit("mlp_layer", layer.mlp_layer)))


def fold_partition(unit: GatedBlock) -> tuple[str, ...]:
    """The attention's ``merge`` projection, or the MLP's last Linear."""
    last = "attn_layer.1.merge" if hasattr(unit.branch, "attn_layer") else "mlp_layer.3"
    return (f"branch.{last}.weight", f"branch.{last}.bias")


register_block(BlockWrapper(MBConv, gate_mbconv))  # folds into the last convolution (conv_c, with a bias)
register_block(BlockWrapper(PartitionAttentionLayer, gate_partition_layer, fold=fold_partition))


def build(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """torchvision's ``arch``; with shape arguments, its ``MaxVit`` itself, the variant's
    values overridden."""
    if not set(kwargs) & set(_SHAPE_ARGS):
        return torchvision_builder(arch, num_classes, **kwargs)
    return MaxVit(num_classes=num_classes, **{**VARIANTS[arch], **kwargs})


def init_conv(conv: nn.Conv2d) -> None:
    """MaxViT's initialisation (its constructor's): normal, std 0.02, zero bias."""
    nn.init.normal_(conv.weight, std=0.02)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def guess(state_dict: Mapping[str, Tensor]) -> list[str]:
    """MaxViT's keys (one variant)."""
    return ["tv_maxvit_t"] if "blocks.0.layers.0.layers.MBconv.layers.conv_c.weight" in state_dict else []


def _describe(arch: str) -> str:
    layers = sum(VARIANTS[arch]["block_layers"])
    return (f"torchvision {arch}; each layer's MBConv and its window and grid attention's attention and MLP "
            f"branches gated ({layers} layers = {5 * layers} units), prior survival 1 - its drop rate")


FAMILY = register_family(Family("MaxViT", {f"tv_{a}": a for a in VARIANTS}, guess, _describe,
                                build=build, init_conv=init_conv))
