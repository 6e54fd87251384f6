"""The table tests/nets/test_families.py and test_families_full_size.py share: one row per
torchvision family with stochastic depth (a new family is a new row), a tiny configuration built
by torchvision's own constructor, the drop rate of each of its gated units, and its full-size
variants' default rates; and the helpers that give such networks weights that look trained.

Transformers' gated units are their residual branches (two per ViT / Swin block, five per
MaxViT layer): a row's ``rates`` gives torchvision's rate of each unit."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial

import pytest
import torch
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.efficientnet import EfficientNet, FusedMBConv, FusedMBConvConfig, MBConv, MBConvConfig
from torchvision.models.maxvit import MaxVit, MaxVitLayer
from torchvision.models.mobilenetv3 import InvertedResidualConfig, MobileNetV3
from torchvision.models.regnet import BlockParams, RegNet
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.models.swin_transformer import (PatchMergingV2, SwinTransformer, SwinTransformerBlock,
                                                 SwinTransformerBlockV2)
from torchvision.models.vision_transformer import VisionTransformer
from torchvision.ops import StochasticDepth

from sdprune.data.bundle import DataBundle, channel_stats
from sdprune.data.images import ImageSet
from sdprune.nets.torchvision_nets import TORCHVISION_ARCHS


def one_per_module(model: nn.Module) -> list[float]:
    """Each gated unit's torchvision drop rate: one StochasticDepth per unit, in forward order."""
    return [m.p for m in model.modules() if isinstance(m, StochasticDepth)]


def swin_rates(model: nn.Module) -> list[float]:
    """A Swin block applies its one StochasticDepth to both its branches: two units each."""
    return [b.stochastic_depth.p for b in model.modules() if isinstance(b, SwinTransformerBlock) for _ in range(2)]


def maxvit_rates(model: nn.Module) -> list[float]:
    """A MaxViT layer's five units (MBConv, window and grid attention and MLP) share its rate."""
    return [layer.layers.window_attention.stochastic_dropout.p for layer in model.modules()
            if isinstance(layer, MaxVitLayer) for _ in range(5)]


def unit_gain(model: nn.Module) -> nn.Module:
    """Every convolution and Linear at unit gain (std 1 / sqrt(fan in)): MaxViT's own std 0.02
    leaves random branches so small that the logits barely depend on the input."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.normal_(0, m.weight[0].numel() ** -0.5)
    return model


def residual_rates(model: nn.Module) -> list[float]:
    """EfficientNet's units: the MBConv / FusedMBConv blocks with a residual connection (the
    others hold a StochasticDepth their forward never calls)."""
    return [b.stochastic_depth.p for b in model.modules() if isinstance(b, (MBConv, FusedMBConv)) and b.use_res_connect]


def endpoint(p: float, i: int, n: int) -> float:
    """ConvNeXt's rule: block i of n drops with p * i / (n - 1), the last one with p."""
    return p * i / (n - 1)


def before_end(p: float, i: int, n: int) -> float:
    """EfficientNet's rule: block i of n drops with p * i / n (every block counted, residual or not)."""
    return p * i / n


@dataclasses.dataclass(frozen=True)
class Row:
    family: str  # the adapter's Family.name
    model: str  # sdprune's name the tiny configuration is built under
    kwargs: dict  # its builder arguments (JSON-able: what a checkpoint records)
    torchvision: Callable[[int], nn.Module]  # the same network from torchvision's own constructor
    drop: float  # its stochastic_depth_prob (0: trained without stochastic depth, every prior 1)
    defaults: dict  # each full-size variant -> torchvision's stochastic_depth_prob for it (0: none)
    # torchvision's drop rate of its StochasticDepth i of n (None: modules shared, or left out at rate 0)
    rule: Callable[[float, int, int], float] | None = endpoint
    rates: Callable[[nn.Module], list[float]] = one_per_module  # torchvision's drop rate of each gated unit
    batchnorm: bool = True  # whether BatchNorm healing applies


TINY_CONVNEXT = [[16, 32, 2], [32, 48, 2], [48, None, 2]]
TINY_EFFICIENTNET = [["MBConv", 1, 3, 1, 16, 16, 2], ["MBConv", 6, 3, 2, 16, 24, 3]]
TINY_EFFICIENTNET_V2 = [["FusedMBConv", 1, 3, 1, 16, 16, 2], ["FusedMBConv", 4, 3, 2, 16, 24, 2],
                        ["MBConv", 4, 3, 2, 24, 32, 3]]
TINY_MOBILENET_V3 = [[16, 3, 16, 16, True, "RE", 1, 1], [16, 3, 48, 16, False, "HS", 1, 1],
                     [16, 3, 48, 24, True, "HS", 2, 1], [24, 5, 72, 24, True, "HS", 1, 1],
                     [24, 3, 72, 24, False, "RE", 1, 1]]
TINY_REGNET = {"depths": [2, 2], "widths": [16, 32], "group_widths": [8, 8], "bottleneck_multipliers": [1.0, 1.0],
               "strides": [2, 2], "se_ratio": 0.25}
TINY_VIT = {"image_size": 32, "patch_size": 4, "num_layers": 2, "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64}
TINY_SWIN = {"patch_size": [4, 4], "embed_dim": 32, "depths": [2, 2], "num_heads": [2, 4], "window_size": [4, 4],
             "stochastic_depth_prob": 0.3}  # 8x8 tokens (shifted windows), then 4x4 (one window: no shift)
TINY_MAXVIT = {"input_size": [32, 32], "stem_channels": 16, "block_channels": [16, 32], "block_layers": [1, 1],
               "head_dim": 8, "partition_size": 4, "stochastic_depth_prob": 0.2}
SWIN_DROP = {"t": 0.2, "s": 0.3, "b": 0.5}
_CONFIGS = {"MBConv": MBConvConfig, "FusedMBConv": FusedMBConvConfig}


def _efficientnet_configs(setting: list) -> list:
    return [_CONFIGS[c[0]](*c[1:]) for c in setting]


ROWS = [
    Row("ConvNeXt", "tv_convnext_tiny", {"block_setting": TINY_CONVNEXT, "stochastic_depth_prob": 0.3},
        lambda classes: ConvNeXt([CNBlockConfig(*c) for c in TINY_CONVNEXT], stochastic_depth_prob=0.3,
                                 num_classes=classes), 0.3,
        {"tv_convnext_tiny": 0.1, "tv_convnext_small": 0.4, "tv_convnext_base": 0.5, "tv_convnext_large": 0.5},
        batchnorm=False),
    Row("EfficientNet", "tv_efficientnet_b0",
        {"inverted_residual_setting": TINY_EFFICIENTNET, "stochastic_depth_prob": 0.5},
        lambda classes: EfficientNet(_efficientnet_configs(TINY_EFFICIENTNET), 0.2, stochastic_depth_prob=0.5,
                                     num_classes=classes), 0.5,
        {f"tv_efficientnet_b{i}": 0.2 for i in range(8)}, rule=before_end, rates=residual_rates),
    Row("EfficientNetV2", "tv_efficientnet_v2_s",
        {"inverted_residual_setting": TINY_EFFICIENTNET_V2, "stochastic_depth_prob": 0.5},
        lambda classes: EfficientNet(_efficientnet_configs(TINY_EFFICIENTNET_V2), 0.2, stochastic_depth_prob=0.5,
                                     num_classes=classes, norm_layer=partial(nn.BatchNorm2d, eps=1e-3),
                                     last_channel=1280), 0.5,
        {f"tv_efficientnet_v2_{v}": 0.2 for v in "sml"}, rule=before_end, rates=residual_rates),
    Row("MobileNetV3", "tv_mobilenet_v3_small", {"inverted_residual_setting": TINY_MOBILENET_V3, "last_channel": 64},
        lambda classes: MobileNetV3([InvertedResidualConfig(*c, 1.0) for c in TINY_MOBILENET_V3], 64,
                                    num_classes=classes), 0.0,
        {"tv_mobilenet_v3_small": 0.0, "tv_mobilenet_v3_large": 0.0}),
    Row("RegNet", "tv_regnet_y_400mf", {"block_params": TINY_REGNET, "stem_width": 16},
        lambda classes: RegNet(BlockParams(**TINY_REGNET), classes, stem_width=16,
                               norm_layer=partial(nn.BatchNorm2d, eps=1e-5, momentum=0.1)), 0.0,
        {f"tv_{arch}": 0.0 for arch in TORCHVISION_ARCHS.values() if arch.startswith("regnet_")}),
    Row("ResNet", "tv_resnext50_32x4d", {"layers": [2, 2, 2, 2], "groups": 4, "width_per_group": 8},
        lambda classes: ResNet(Bottleneck, [2, 2, 2, 2], classes, groups=4, width_per_group=8), 0.0,
        {f"tv_{arch}": 0.0 for arch in TORCHVISION_ARCHS.values() if "resn" in arch}),
    Row("ViT", "tv_vit_b_16", TINY_VIT, lambda classes: VisionTransformer(num_classes=classes, **TINY_VIT), 0.0,
        {f"tv_vit_{v}": 0.0 for v in ("b_16", "b_32", "l_16", "l_32", "h_14")}, batchnorm=False),
    Row("Swin", "tv_swin_t", TINY_SWIN, lambda classes: SwinTransformer(num_classes=classes, **TINY_SWIN), 0.3,
        {f"tv_swin_{v}": p for v, p in SWIN_DROP.items()}, rates=swin_rates, batchnorm=False),
    Row("SwinV2", "tv_swin_v2_t", TINY_SWIN,
        lambda classes: SwinTransformer(num_classes=classes, block=SwinTransformerBlockV2,
                                        downsample_layer=PatchMergingV2, **TINY_SWIN), 0.3,
        {f"tv_swin_v2_{v}": p for v, p in SWIN_DROP.items()}, rates=swin_rates, batchnorm=False),
    Row("MaxViT", "tv_maxvit_t", TINY_MAXVIT, lambda classes: unit_gain(MaxVit(num_classes=classes, **TINY_MAXVIT)), 0.2,
        {"tv_maxvit_t": 0.2}, rule=None, rates=maxvit_rates),
]
COVERED_ELSEWHERE = {"MobileNetV2"}  # test_convert.py
IDS = [r.family for r in ROWS]


def applied_rates(tv: nn.Module) -> list[float]:
    """The drop rate of every StochasticDepth torchvision's forward applies, in order (a block
    without a residual connection holds one it never calls); [] for a network without any."""
    called: list[float] = []
    hooks = [m.register_forward_hook(lambda m, a, o: called.append(m.p))
             for m in tv.modules() if isinstance(m, StochasticDepth)]
    if hooks:
        with torch.no_grad():
            tv.eval()(torch.zeros(1, 3, 32, 32, device=next(tv.parameters()).device))
    for hook in hooks:
        hook.remove()
    return called


def check_rule(row: Row, tv: nn.Module, drop: float) -> None:
    """Every StochasticDepth of ``tv`` follows torchvision's linear rule up to ``drop`` (a row
    without a rule: its last unit's rate is ``drop``)."""
    rates = [m.p for m in tv.modules() if isinstance(m, StochasticDepth)]
    if not drop:
        assert not rates
    elif row.rule is None:
        assert row.rates(tv)[-1] == pytest.approx(drop)
    else:
        assert rates == pytest.approx([row.rule(drop, i, len(rates)) for i in range(len(rates))])


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with weights that look trained: every parameter torchvision initialises to a
    constant (norm affines, biases, layer scales) made random, BatchNorm statistics near those
    of real activations, a unit-gain classifier, so every layer moves the logits and a wrong
    mapping shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1 and bool((p == p.flatten()[0]).all()):
                p.copy_(torch.empty_like(p).uniform_(0.5, 1.5) if p.flatten()[0] != 0 else torch.randn_like(p) * 0.1)
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for m in norms:
            m.momentum = None
        if norms:
            model.train()(torch.randn(16, 3, 32, 32))
        for m in norms:
            m.momentum = 0.1
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        parent = linears[-1].rpartition(".")[0]  # the classifier's layers (MobileNetV3: two), else its last
        for name in [n for n in linears if parent and n.startswith(f"{parent}.")] or linears[-1:]:
            head = model.get_submodule(name)
            head.weight.normal_(0, head.in_features ** -0.5)  # unit gain: logits far enough apart to tell
    return model.eval()


def theirs(row: Row, classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return trained_like(row.torchvision(classes), seed)


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def random_bundle(classes: int = 4) -> DataBundle:
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    split = ImageSet(images, torch.arange(16) % classes)
    mean, std = channel_stats(images)
    return DataBundle("random", split, split, split, [str(i) for i in range(classes)], mean, std)
