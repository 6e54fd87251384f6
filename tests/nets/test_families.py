"""Every torchvision family, through one table (a new family is a new row): a tiny
configuration built by torchvision's own constructor is adopted exactly both ways, with its
prior survivals folded; removal, a training step that skips a closed block, a retrofit that
starts from the adopted function and ONNX export with parity; the full-size variants on the
meta device only.

MobileNetV2 (prior survival 1: tensors shared, nothing folded) is checked in test_convert.py.
Transformers' gated units are their residual branches (two per ViT / Swin block, five per
MaxViT layer): a row's ``rates`` gives torchvision's rate of each unit."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from functools import partial

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn
from torchvision.models.convnext import CNBlock, CNBlockConfig, ConvNeXt
from torchvision.models.efficientnet import EfficientNet, FusedMBConv, FusedMBConvConfig, MBConv, MBConvConfig
from torchvision.models.mobilenetv3 import InvertedResidualConfig, MobileNetV3
from torchvision.models.regnet import BlockParams, RegNet
from torchvision.models.maxvit import MaxVit, MaxVitLayer
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.models.swin_transformer import (PatchMergingV2, SwinTransformer, SwinTransformerBlock,
                                                 SwinTransformerBlockV2)
from torchvision.models.vision_transformer import VisionTransformer
from torchvision.ops import StochasticDepth

from sdprune.data.bundle import DataBundle, channel_stats
from sdprune.data.images import ImageSet
from sdprune.deploy.export import export_onnx
from sdprune.depth.gates import GateSampler, gating
from sdprune.depth.schedule import get_survival, set_survival, survival_schedule
from sdprune.depth.structure import block_layout, block_names, forward_flops, gated_blocks, remove_blocks
from sdprune.errors import SdpruneError
from sdprune.nets import adopt_weights, create_model, detect_arch, from_gated, gate_residual_blocks, to_gated
from sdprune.nets.layout import torchvision_layout
from sdprune.nets.torchvision_nets import TORCHVISION_ARCHS, families, guess_torchvision
from sdprune.prune.heal import NO_BATCHNORM, bn_statistics, has_batchnorm, heal_bn, recalibrate_bn
from sdprune.train.adopt import Adopted
from sdprune.train.config import TrainConfig
from sdprune.train.trainer import build_training


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


def refused(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(SdpruneError, match=match) as err:
        fn(*args, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_every_family_with_stochastic_depth_has_a_row():
    assert {f.name for f in families()} == {r.family for r in ROWS} | COVERED_ELSEWHERE
    for row in ROWS:
        family = next(f for f in families() if f.name == row.family)
        assert set(row.defaults) == set(family.archs)  # every variant is checked on the meta device


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_adoption_is_exact_both_ways(row):
    tv = theirs(row)
    state = tv.state_dict()
    ours, info = adopt_weights(state, row.model, **row.kwargs)
    assert info["arch"] == row.model and info["kwargs"] == row.kwargs and not info["new_head"]
    x = torch.randn(3, 3, 32, 32)
    expected = logits(tv, x)
    assert (expected[0] - expected[1]).abs().max() > 0.1  # a network whose logits depend on its input
    torch.testing.assert_close(logits(ours, x), expected, atol=1e-5, rtol=0)
    back = from_gated(ours.state_dict(), row.model, **row.kwargs)
    assert list(back) == list(state)
    for key, value in state.items():  # a folded prior comes back out as it went in (to float rounding)
        torch.testing.assert_close(back[key], value, atol=0, rtol=1e-6)
    again = row.torchvision(10)
    again.load_state_dict(back)
    torch.testing.assert_close(logits(again, x), expected, atol=1e-5, rtol=0)
    gated = to_gated(state, row.model, **row.kwargs)
    assert all(torch.equal(gated[k], v) for k, v in ours.state_dict().items())


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_the_prior_survival_is_torchvisions_and_its_inverted_scaling_is_folded(row, monkeypatch):
    tv = theirs(row)
    ours, _ = adopt_weights(tv.state_dict(), row.model, **row.kwargs)
    blocks = len(gated_blocks(ours))
    check_rule(row, tv, row.drop)
    rates = row.rates(tv) or [0.0] * blocks  # none: trained whole
    # the row reads the rates torchvision's forward applies (a unit at rate 0 may hold an
    # Identity instead of a StochasticDepth: MaxViT's first MBConv)
    assert [p for p in applied_rates(tv) if p] == pytest.approx([p for p in rates if p])
    assert get_survival(ours) == pytest.approx([1 - p for p in rates], abs=1e-7)
    assert applied_rates(ours) == []  # the gate replaced every one torchvision applies
    x = torch.randn(2, 3, 32, 32)
    expected = logits(tv, x)
    if row.drop > 0:
        unfolded = copy.deepcopy(ours)
        set_survival(unfolded, [1.0] * blocks)  # the prior left out: another function
        assert not torch.allclose(logits(unfolded, x), expected, atol=1e-3)
    # training with every gate open is torchvision's inverted training with every row kept: branch / (1 - p)
    monkeypatch.setattr(StochasticDepth, "forward", lambda self, y: y / (1 - self.p) if self.training else y)
    for m in [*tv.modules(), *ours.modules()]:
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    with torch.no_grad():
        torch.testing.assert_close(ours.train()(x), tv.train()(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_a_new_head_and_a_grey_input_keep_the_backbone(row):
    tv = theirs(row, classes=1000)
    ours, info = adopt_weights(tv.state_dict(), row.model, num_classes=3, in_channels=1, **row.kwargs)
    assert info["new_head"] and info["weights_classes"] == 1000 and info["input_conv"] == "summed"
    back = from_gated(ours.state_dict(), row.model, **row.kwargs)
    lay = torchvision_layout(row.model, row.kwargs)
    assert back[lay.head[0]].shape[0] == 3 and back[lay.first_conv].shape[1] == 1
    for key, value in tv.state_dict().items():
        if key not in (*lay.head, lay.first_conv):
            torch.testing.assert_close(back[key], value, atol=0, rtol=1e-6)
    grey = torch.randn(2, 1, 32, 32)
    features = {}
    head = [m for m in ours.modules() if isinstance(m, nn.Linear)][-1]
    head.register_forward_hook(lambda m, a, o: features.setdefault("ours", a[0]))
    [m for m in tv.modules() if isinstance(m, nn.Linear)][-1].register_forward_hook(
        lambda m, a, o: features.setdefault("theirs", a[0]))
    logits(ours, grey), logits(tv, grey.expand(-1, 3, -1, -1))
    scale = max(1.0, float(features["theirs"].abs().max()))  # summed filters: rounding grows with the features
    torch.testing.assert_close(features["ours"], features["theirs"], atol=1e-5 * scale, rtol=1e-5)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_removed_blocks_leave_the_tree_and_compute_a_closed_gate(row):
    ours, _ = adopt_weights(theirs(row).state_dict(), row.model, **row.kwargs)
    names = block_names(ours)
    cut = names[1::2]
    x = torch.randn(2, 3, 32, 32)
    blocks = [b for _, b in gated_blocks(ours)]
    with gating(blocks, [0.0 if n in cut else None for n in names]):
        expected = logits(ours, x)
    before = ours.state_dict()
    pruned = remove_blocks(copy.deepcopy(ours), cut)
    assert block_names(pruned) == [n for n in names if n not in cut]
    torch.testing.assert_close(logits(pruned, x), expected, atol=1e-6, rtol=0)
    left = pruned.state_dict()  # every other tensor (stems, downsampling layers, head) is untouched
    gone = [f"{n}." for n in cut]  # a projection shortcut stays (as a ResNet's does): MaxViT's first MBConvs
    assert set(left) == {k for k in before if not any(k.startswith(g) and not k.startswith(f"{g}shortcut.")
                                                      for g in gone)}
    assert all(torch.equal(left[k], before[k]) for k in left)
    stages = {r["stage"] for r in block_layout(ours, (3, 32, 32))}
    assert {r["stage"] for r in block_layout(pruned, (3, 32, 32))} == stages  # every stage kept a block


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_a_training_step_skips_the_closed_blocks(row):
    ours, _ = adopt_weights(theirs(row).state_dict(), row.model, **row.kwargs)
    if row.drop == 0:  # trained without stochastic depth: draw from survival 0.5
        set_survival(ours, [0.5] * len(gated_blocks(ours)))
    sampler = GateSampler(ours.train(), "batch", seed=0)  # drawn from the priors: torchvision's own rates
    step = next(s for s in range(100) if 0.0 in sampler.draw(s, 2).tolist())
    x = torch.randn(2, 3, 32, 32)
    with sampler.install(step=step, batch_size=2) as gates:
        F.cross_entropy(ours(x), torch.tensor([0, 1])).backward()
    for (_, block), gate in zip(gated_blocks(ours), gates.tolist()):
        grads = [p.grad is not None for p in block.branch.parameters()]
        assert all(grads) if gate == 1.0 else not any(grads)


@pytest.mark.parametrize("survival", ["none", "linear"])
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_a_retrofit_starts_from_the_adopted_function(row, survival):
    data = random_bundle()
    model, _ = adopt_weights(theirs(row, classes=4).state_dict(), row.model, **row.kwargs)
    adopted = Adopted(model.eval(), row.model, [], row.kwargs, data.mean, data.std)
    config = TrainConfig(init="adopted.pt", model=row.model, survival=survival, batch_size=8, device="cpu")
    trainer = build_training(config, data, torch.device("cpu"), adopted=adopted)
    schedule = survival_schedule(survival, len(gated_blocks(model)))
    assert get_survival(trainer.model) == pytest.approx(schedule)
    x = torch.randn(2, 3, 32, 32)
    # the same function, to float rounding (each branch's output scale multiplied by s / s')
    torch.testing.assert_close(logits(trainer.model, x), logits(model, x), atol=1e-5, rtol=1e-5)


def random_bundle(classes: int = 4) -> DataBundle:
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    split = ImageSet(images, torch.arange(16) % classes)
    mean, std = channel_stats(images)
    return DataBundle("random", split, split, split, [str(i) for i in range(classes)], mean, std)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_export_keeps_parity(row, tmp_path):
    data = random_bundle()
    model, _ = adopt_weights(theirs(row, classes=4).state_dict(), row.model, **row.kwargs)
    names = block_names(model)
    remove_blocks(model, names[1:2])
    meta = {"model": {"name": row.model, "kwargs": row.kwargs}, "blocks": names, "removed": names[1:2],
            "data": {"dataset": data.name, "classes": data.classes, "input_shape": [3, 32, 32], "mean": data.mean,
                     "std": data.std}}
    record = export_onnx(model, meta, tmp_path, data=data, samples=8, batch_sizes=(1, 8))
    assert record["parity"]["ok"] and all(r["max_abs_diff"] <= 1e-4 for r in record["parity"]["batches"])


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_batchnorm_healing_applies_where_the_family_has_batchnorm(row):
    data = random_bundle()
    model, _ = adopt_weights(theirs(row, classes=4).state_dict(), row.model, **row.kwargs)
    remove_blocks(model, block_names(model)[1:2])
    before = bn_statistics(model)
    assert has_batchnorm(model) == row.batchnorm == bool(before)
    assert recalibrate_bn(model, data, batches=2, batch_size=8) == (16 if before else 0)
    after = bn_statistics(model)  # every BatchNorm re-estimated on the pruned network's activations
    assert all(not torch.equal(after[k], v) for k, v in before.items() if k.endswith("running_mean"))
    record = heal_bn(model, data, batches=2)
    if row.batchnorm:
        assert record["statistics"] in ("recalibrated", "trained")
    else:  # LayerNorm only: prune says healing does not apply instead of measuring twice
        assert record["statistics"] == "none" and record["note"] == NO_BATCHNORM


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_flops_count_every_unit_alike_on_any_device(row):
    """Attention counts on the CPU as on the meta device (its fused kernels count nothing)."""
    model = create_model(row.model, 10, **row.kwargs)
    with torch.device("meta"):
        shapes = create_model(row.model, 10, **row.kwargs)
    counts = forward_flops(model, (3, 32, 32)).get_flop_counts()
    assert counts == forward_flops(shapes, (3, 32, 32)).get_flop_counts()  # every module, every op
    assert all(r["flops"] > 0 for r in block_layout(model, (3, 32, 32)))


FULL_SIZE = [(row, name) for row in ROWS for name in row.defaults]


@pytest.fixture
def regnet_on_meta(monkeypatch):
    """torchvision's RegNet builders compute their widths with tensors, which the meta device
    cannot read back: here they compute them on the CPU (as sdprune's RegNet adapter does)."""
    init = BlockParams.from_init_params.__func__

    def on_cpu(cls, **kwargs):
        with torch.device("cpu"):
            return init(cls, **kwargs)
    monkeypatch.setattr(BlockParams, "from_init_params", classmethod(on_cpu))


@pytest.mark.parametrize("row,name", FULL_SIZE, ids=[n for _, n in FULL_SIZE])
def test_full_size_variants_convert_on_the_meta_device(row, name, regnet_on_meta):
    with torch.device("meta"):  # shapes only: nothing initialised, nothing downloaded
        tv = getattr(tvm, TORCHVISION_ARCHS[name])(weights=None)
    lay = torchvision_layout(name)  # built as the registry's builder builds it (test_nets runs that one)
    check_rule(row, tv, row.defaults[name])  # torchvision's linear rule, up to the variant's rate
    # each gated unit's torchvision rate (the tiny configurations check by a forward that the
    # row reads the ones torchvision applies)
    rates = row.rates(tv) or [0.0] * len(lay.blocks)
    assert [b.prior for b in lay.blocks] == pytest.approx([1 - p for p in rates])
    state = tv.state_dict()
    gated = to_gated(state, name)
    assert list(gated) == list(lay.gated_keys)  # every key of the gated network, nothing else
    assert sum(v.numel() for k, v in gated.items() if k not in lay.made and not k.endswith(".survival")) == \
        sum(v.numel() for v in state.values())  # torchvision's tensors, no more
    back = from_gated(gated, name)
    assert list(back) == list(state) and all(back[k].shape == v.shape for k, v in state.items())
    assert name in guess_torchvision(state) and detect_arch(state) == name


def test_what_does_not_fit_is_refused_in_one_line():
    row = ROWS[0]
    tiny = theirs(row).state_dict()
    refused("weights do not fit tv_convnext_tiny: missing", adopt_weights, tiny, "tv_convnext_tiny")
    refused("these weights are none of the architectures", adopt_weights, tiny, None)
    refused("a ConvNeXt block_setting entry is a CNBlockConfig or .*, not 7", create_model, "tv_convnext_tiny", 10,
            block_setting=[7])
    ours, _ = adopt_weights(tiny, row.model, **row.kwargs)
    remove_blocks(ours, block_names(ours)[:1])
    refused(r"1 of tv_convnext_tiny's blocks were removed \(e.g. features.1.0\)", from_gated, ours.state_dict(),
            row.model, **row.kwargs)

    class Doubled(CNBlock):
        def forward(self, x):
            return super().forward(x) * 2

    refused("Doubled subclasses torchvision's CNBlock but overrides forward", gate_residual_blocks,
            nn.Sequential(Doubled(8, 1e-6, 0.1)))


def test_custom_configurations_build_through_the_registry():
    model = create_model("tv_convnext_tiny", 5, in_channels=2, block_setting=[CNBlockConfig(8, None, 3)],
                         stochastic_depth_prob=0.2)
    assert get_survival(model) == pytest.approx([1.0, 0.9, 0.8])
    assert next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels == 2
    assert logits(model, torch.randn(1, 2, 32, 32)).shape == (1, 5)
