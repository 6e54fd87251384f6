"""torchvision's Vision Transformer (b_16, b_32, l_16, l_32, h_14) as an sdprune family.

Every ``EncoderBlock`` is two residual branches in sequence, and each is its own gated
unit. Why the branch, not the block: a block is its two units removed together, so no
block-level choice is lost; one branch can go and the other stay; Swin draws stochastic
depth per branch, so only a branch takes 1 / (1 - p) exactly; at equal kept FLOPs the two
units measured a tie (tools/unit_choice.py; README, "Transformers: the unit is the branch"):

    x = x + g_attn * dropout(self_attention(ln_1(x)))      encoder_layer_i.attn
    x = x + g_mlp * mlp(ln_2(x))                            encoder_layer_i.mlp

so ``encoder.layers.encoder_layer_0.ln_1.weight`` becomes
``encoder.layers.encoder_layer_0.attn.branch.ln_1.weight``; removing both units of a block
is removing the block. ``nn.MultiheadAttention`` takes (query, key, value) and returns a
tuple, so the attention branch holds it through ``SelfAttention`` (the same module, called
as ViT calls it). torchvision trains ViT without stochastic depth: every prior survival is
1 and nothing is folded (a fold would go into ``out_proj`` and the MLP's last Linear).

A custom configuration goes through torchvision's own constructor: any
``VisionTransformer`` argument (``image_size``, ``patch_size``, ``num_layers``,
``num_heads``, ``hidden_dim``, ``mlp_dim``, ...) overrides the variant's.

``vit_cifar`` (benchmark B7) is the same constructor at CIFAR's scale: 32 px, patch 4
(64 tokens), 6 layers, width 192, 3 heads, MLP 384, with its own stochastic depth (which
torchvision's ViT lacks): the linear rule over its 12 units up to a drop rate of 0.1, the
rule ``sdprune train --survival linear --p-last 0.9`` trains with. ``sdprune train``
replaces those built-in survivals with its ``--survival`` schedule, so there only
``--survival none`` trains the plain twin; ``stochastic_depth_prob=0`` builds it for direct
use (``create_model``, whose survivals a schedule does not overwrite).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn
from torchvision.models.vision_transformer import EncoderBlock, VisionTransformer

from sdprune.depth.block import GatedBlock
from sdprune.depth.schedule import set_survival, survival_schedule
from sdprune.depth.structure import gated_blocks
from sdprune.errors import SdpruneError
from sdprune.nets.registry import register
from sdprune.nets.torchvision_nets import Family, register_family, torchvision_builder, torchvision_model
from sdprune.nets.wrap import BlockWrapper, gate_residual_blocks, register_block

# torchvision's builders: patch, layers, heads, width, MLP width of each variant
VARIANTS: dict[str, dict[str, int]] = {
    f"vit_{name}": dict(zip(("patch_size", "num_layers", "num_heads", "hidden_dim", "mlp_dim"), config))
    for name, config in {"b_16": (16, 12, 12, 768, 3072), "b_32": (32, 12, 12, 768, 3072),
                         "l_16": (16, 24, 16, 1024, 4096), "l_32": (32, 24, 16, 1024, 4096),
                         "h_14": (14, 32, 16, 1280, 5120)}.items()}


class SelfAttention(nn.Module):
    """``nn.MultiheadAttention`` as a one-input layer: x attends to itself, no attention
    weights returned (as ViT calls it; the same module, so the same weights). Exports as
    the MultiheadAttention it holds (dynamo traces its non-fast path)."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.mha = mha

    def forward(self, x: Tensor) -> Tensor:
        return self.mha(x, x, x, need_weights=False)[0]


def gate_encoder_block(block: EncoderBlock) -> nn.Module:
    """An EncoderBlock as its two gated residual branches, attention then MLP."""
    attn = nn.Sequential(OrderedDict(ln_1=block.ln_1, self_attention=SelfAttention(block.self_attention),
                                     dropout=block.dropout))
    mlp = nn.Sequential(OrderedDict(ln_2=block.ln_2, mlp=block.mlp))
    return nn.Sequential(OrderedDict(attn=GatedBlock(attn), mlp=GatedBlock(mlp)))


def fold_keys(unit: GatedBlock) -> tuple[str, ...]:
    """Where a unit's output is scaled: the attention's output projection, the MLP's last Linear."""
    last = "self_attention.mha.out_proj" if hasattr(unit.branch, "self_attention") else "mlp.3"
    return (f"branch.{last}.weight", f"branch.{last}.bias")


register_block(BlockWrapper(EncoderBlock, gate_encoder_block, fold=fold_keys))


def build(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """torchvision's ``arch``; with architecture arguments, its ``VisionTransformer`` itself,
    the variant's values overridden (the builder's image_size default: 224)."""
    if not set(kwargs) & set(VARIANTS[arch]):
        return torchvision_builder(arch, num_classes, **kwargs)
    config = {**VARIANTS[arch], "image_size": 224, **kwargs}
    return VisionTransformer(num_classes=num_classes, **config)


def init_conv(conv: nn.Conv2d) -> None:
    """ViT's patch embedding initialisation (its constructor's): truncated normal, std
    sqrt(1 / fan_in), zero bias."""
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    nn.init.trunc_normal_(conv.weight, std=math.sqrt(1 / fan_in))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def guess(state_dict: Mapping[str, Tensor]) -> list[str]:
    """The ViT these weights look like, from the patch embedding's shape and the depth."""
    stem = state_dict.get("conv_proj.weight")
    if not isinstance(stem, Tensor) or stem.dim() != 4:
        return []
    layers = len({k.split(".")[2] for k in state_dict if k.startswith("encoder.layers.encoder_layer_")})
    return [f"tv_{arch}" for arch, v in VARIANTS.items()
            if (v["hidden_dim"], v["patch_size"], v["num_layers"]) == (stem.shape[0], stem.shape[-1], layers)]


FAMILY = register_family(Family(
    "ViT", {f"tv_{arch}": arch for arch in VARIANTS}, guess,
    lambda arch: (f"torchvision {arch}; every encoder layer's attention and MLP branches gated "
                  f"({VARIANTS[arch]['num_layers']} layers = {2 * VARIANTS[arch]['num_layers']} units)"),
    build=build, init_conv=init_conv))


CIFAR_VIT = {"image_size": 32, "patch_size": 4, "num_layers": 6, "num_heads": 3, "hidden_dim": 192, "mlp_dim": 384}
CIFAR_DROP = 0.1  # the small end of torchvision's recipes (0.1 to 0.5): a 6-layer network on 50k images


@register("vit_cifar", (3, 32, 32), "torchvision VisionTransformer for 32 px (patch 4, 6 layers, width 192, "
          "3 heads), 12 gated units, linear stochastic depth to 0.1")
def vit_cifar(num_classes: int, in_channels: int = 3, stochastic_depth_prob: float = CIFAR_DROP,
              **kwargs: Any) -> nn.Module:
    """A small ViT for CIFAR through ``tv_vit``'s builder (any ``VisionTransformer`` argument
    overrides ``CIFAR_VIT``), each unit's prior survival the linear rule to
    1 - ``stochastic_depth_prob`` (0: the plain twin, every prior 1; ``sdprune train``
    replaces these with its ``--survival`` schedule: there ``--survival none`` is the twin)."""
    if not 0.0 <= stochastic_depth_prob < 1.0:
        raise SdpruneError(f"stochastic_depth_prob must be in [0, 1), got {stochastic_depth_prob}")
    model = gate_residual_blocks(torchvision_model("vit_b_16", num_classes, in_channels, **{**CIFAR_VIT, **kwargs}))
    # torchvision's ViT has no StochasticDepth to read a prior off: set the rule training uses
    set_survival(model, survival_schedule("linear", len(gated_blocks(model)), 1.0 - stochastic_depth_prob))
    return model
