"""torchvision's Swin Transformer, V1 (t, s, b) and V2 (t, s, b), as two sdprune families.

Every ``SwinTransformerBlock`` is two residual branches in sequence, each its own gated
unit. Why the branch, not the block: a block is its two units removed together, so no
block-level choice is lost; one branch can go and the other stay; Swin draws stochastic
depth per branch, so only a branch takes 1 / (1 - p) exactly; at equal kept FLOPs the two
units measured a tie (tools/unit_choice.py; README, "Transformers: the unit is the branch"):

    V1:  x = x + g_attn * attn(norm1(x));  x = x + g_mlp * mlp(norm2(x))
    V2:  x = x + g_attn * norm1(attn(x));  x = x + g_mlp * norm2(mlp(x))   (post-norm)

(``features.1.0.norm1.weight`` becomes ``features.1.0.attn.branch.norm1.weight``). The
attention is torchvision's own module (shifted windows, relative position bias, V2's
cosine attention and log-spaced continuous position bias MLP), called unchanged. A block
applies one ``StochasticDepth(p, "row")`` to both branches, drawing independently for
each; p rises linearly over the blocks up to the variant's ``stochastic_depth_prob``
(0.2 t, 0.3 s, 0.5 b). Both gates get prior survival 1 - p, and 1 / (1 - p) is folded
where each branch's output is scaled: V1 into the attention's output projection and the
MLP's last Linear, V2 into the affine of the LayerNorm that ends each branch. The patch
merging layers between stages are no branch's and stay.

A custom configuration goes through torchvision's own constructor: any
``SwinTransformer`` argument (``embed_dim``, ``depths``, ``num_heads``, ``window_size``,
``patch_size``, ``stochastic_depth_prob``, ...) overrides the variant's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn
from torchvision.models.swin_transformer import (PatchMergingV2, SwinTransformer, SwinTransformerBlock,
                                                 SwinTransformerBlockV2)

from sdprune.depth.block import GatedBlock
from sdprune.nets.torchvision_nets import Family, register_family, torchvision_builder
from sdprune.nets.wrap import BlockWrapper, register_block

_SIZES = {"t": (96, [2, 2, 6, 2], [3, 6, 12, 24], 0.2), "s": (96, [2, 2, 18, 2], [3, 6, 12, 24], 0.3),
          "b": (128, [2, 2, 18, 2], [4, 8, 16, 32], 0.5)}


def _variant(size: str, window: int) -> dict[str, Any]:
    embed, depths, heads, drop = _SIZES[size]
    return {"patch_size": [4, 4], "embed_dim": embed, "depths": depths, "num_heads": heads,
            "window_size": [window, window], "stochastic_depth_prob": drop}


# torchvision's builders' arguments (V2 also passes its block and patch merging classes)
VARIANTS: dict[str, dict[str, Any]] = {
    **{f"swin_{s}": _variant(s, 7) for s in _SIZES},
    **{f"swin_v2_{s}": {**_variant(s, 8), "block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2}
       for s in _SIZES}}
_SHAPE_ARGS = ("patch_size", "embed_dim", "depths", "num_heads", "window_size")


def gate_block_v1(block: SwinTransformerBlock) -> nn.Module:
    """A V1 block as its two gated pre-norm branches, attention then MLP."""
    return nn.Sequential(OrderedDict(
        attn=GatedBlock(nn.Sequential(OrderedDict(norm1=block.norm1, attn=block.attn))),
        mlp=GatedBlock(nn.Sequential(OrderedDict(norm2=block.norm2, mlp=block.mlp)))))


def gate_block_v2(block: SwinTransformerBlockV2) -> nn.Module:
    """A V2 block as its two gated post-norm branches, attention then MLP."""
    return nn.Sequential(OrderedDict(
        attn=GatedBlock(nn.Sequential(OrderedDict(attn=block.attn, norm1=block.norm1))),
        mlp=GatedBlock(nn.Sequential(OrderedDict(mlp=block.mlp, norm2=block.norm2)))))


def fold_v1(unit: GatedBlock) -> tuple[str, ...]:
    """The attention's output projection, or the MLP's last Linear."""
    last = "attn.proj" if hasattr(unit.branch, "attn") else "mlp.3"
    return (f"branch.{last}.weight", f"branch.{last}.bias")


def fold_v2(unit: GatedBlock) -> tuple[str, ...]:
    """The LayerNorm that ends the branch (its affine scales the branch's output)."""
    last = "norm1" if hasattr(unit.branch, "attn") else "norm2"
    return (f"branch.{last}.weight", f"branch.{last}.bias")


register_block(BlockWrapper(SwinTransformerBlock, gate_block_v1, fold=fold_v1))
register_block(BlockWrapper(SwinTransformerBlockV2, gate_block_v2, fold=fold_v2))


def build(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """torchvision's ``arch``; with shape arguments, its ``SwinTransformer`` itself, the
    variant's values overridden."""
    if not set(kwargs) & set(_SHAPE_ARGS):
        return torchvision_builder(arch, num_classes, **kwargs)
    return SwinTransformer(num_classes=num_classes, **{**VARIANTS[arch], **kwargs})


def init_conv(conv: nn.Conv2d) -> None:
    """Swin's patch embedding keeps PyTorch's default initialisation (its constructor
    initialises only the Linear layers)."""
    conv.reset_parameters()


# (V2, embedding width, blocks in stage 3) -> torchvision's name
_BY_SHAPE = {("v2_" in arch, v["embed_dim"], v["depths"][2]): arch for arch, v in VARIANTS.items()}


def guess(state_dict: Mapping[str, Tensor]) -> list[str]:
    """The Swin these weights look like: V2 from its position-bias MLP, then the embedding
    width and stage 3's depth."""
    stem = state_dict.get("features.0.0.weight")
    if not isinstance(stem, Tensor) or "features.1.0.attn.qkv.weight" not in state_dict:
        return []
    v2 = "features.1.0.attn.cpb_mlp.0.weight" in state_dict
    depth = len({k.split(".")[2] for k in state_dict if k.startswith("features.5.")})
    arch = _BY_SHAPE.get((v2, int(stem.shape[0]), depth))
    return [f"tv_{arch}"] if arch else []


def _describe(arch: str) -> str:
    blocks = sum(VARIANTS[arch]["depths"])
    return (f"torchvision {arch}; every block's attention and MLP branches gated ({blocks} blocks = "
            f"{2 * blocks} units), prior survival 1 - its drop rate")


FAMILY = register_family(Family("Swin", {f"tv_{a}": a for a in VARIANTS if "v2" not in a}, guess, _describe,
                                build=build, init_conv=init_conv))
FAMILY_V2 = register_family(Family("SwinV2", {f"tv_{a}": a for a in VARIANTS if "v2" in a}, guess, _describe,
                                   build=build, init_conv=init_conv))
