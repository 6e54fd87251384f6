"""Every registered architecture trains and evaluates; the adapters are faithful."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm

from sdprune.depth.gates import GateSampler
from sdprune.depth.schedule import set_survival
from sdprune.depth.structure import gated_blocks
from sdprune.errors import SdpruneError
from sdprune.nets.measure import count_flops, count_params
from sdprune.nets.registry import create_model, describe_model, list_models, model_info
from sdprune.nets.torchvision_nets import TORCHVISION_ARCHS, families

BLOCKS = {  # gated blocks per architecture: 3n for CIFAR ResNets, torchvision's block counts
    "resnet20": 9, "resnet32": 15, "resnet44": 21, "resnet56": 27, "resnet110": 54,
    "resnet1202": 600, "cifar_resnet152": 75, "tv_resnet18": 8, "tv_resnet34": 16,
    "tv_resnet50": 16, "tv_resnet101": 33, "tv_resnet152": 50, "mobilenet_v2": 10,
    "tv_convnext_tiny": 18, "tv_convnext_small": 36, "tv_convnext_base": 36, "tv_convnext_large": 36,
    "convnext_cifar": 12,
    "tv_resnext50_32x4d": 16, "tv_resnext101_32x8d": 33, "tv_resnext101_64x4d": 33, "tv_wide_resnet50_2": 16,
    "tv_wide_resnet101_2": 33, "tv_mobilenet_v3_small": 6, "tv_mobilenet_v3_large": 10,
    # EfficientNet: the MBConv / FusedMBConv blocks with a residual connection
    "tv_efficientnet_b0": 9, "tv_efficientnet_b1": 16, "tv_efficientnet_b2": 16, "tv_efficientnet_b3": 19,
    "tv_efficientnet_b4": 25, "tv_efficientnet_b5": 32, "tv_efficientnet_b6": 38, "tv_efficientnet_b7": 48,
    "tv_efficientnet_v2_s": 35, "tv_efficientnet_v2_m": 51, "tv_efficientnet_v2_l": 73,
    "tv_regnet_x_400mf": 22, "tv_regnet_x_800mf": 16, "tv_regnet_x_1_6gf": 18, "tv_regnet_x_3_2gf": 25,
    "tv_regnet_x_8gf": 23, "tv_regnet_x_16gf": 22, "tv_regnet_x_32gf": 23, "tv_regnet_y_400mf": 16,
    "tv_regnet_y_800mf": 14, "tv_regnet_y_1_6gf": 27, "tv_regnet_y_3_2gf": 21, "tv_regnet_y_8gf": 17,
    "tv_regnet_y_16gf": 18, "tv_regnet_y_32gf": 20, "tv_regnet_y_128gf": 27,
    # transformers: two units (attention, MLP) per block; MaxViT five per layer (MBConv and two pairs)
    "tv_vit_b_16": 24, "tv_vit_b_32": 24, "tv_vit_l_16": 48, "tv_vit_l_32": 48, "tv_vit_h_14": 64,
    "tv_swin_t": 24, "tv_swin_s": 48, "tv_swin_b": 48, "tv_swin_v2_t": 24, "tv_swin_v2_s": 48, "tv_swin_v2_b": 48,
    "tv_maxvit_t": 55, "vit_cifar": 12,
}
# Built and run on the meta device only (shapes, no weights): a network above this many
# parameters (ConvNeXt-B/L would take 10 s a case here), and every full-size torchvision
# variant but the smallest of its family (an EfficientNet-B7 takes 8 s a case); test_families.py
# trains every family on a tiny configuration built by torchvision's own constructor.
META_ONLY_PARAMS = 65_000_000
SMALLEST = {next(iter(family.archs)) for family in families()}
# Networks built for one input size (ViT's position embedding, MaxViT's partition grid) run at
# it: 224 px on the meta device only (test_families.py runs them on a tiny configuration), 32 px
# (vit_cifar) for real.
FIXED_INPUT = ("tv_vit_", "tv_maxvit_", "vit_cifar")


def meta_only(name: str, model: torch.nn.Module, side: int) -> bool:
    return (count_params(model) > META_ONLY_PARAMS or side > 32
            or (name in TORCHVISION_ARCHS and name not in SMALLEST))


def tiny_side(name: str) -> int:
    """Smallest convenient input side: CIFAR nets are happy at 8, ImageNet nets divide by 32,
    a network built for one size takes that size."""
    side = model_info(name).default_input[-1]
    if name == "convnext_cifar":  # a patch-2 stem and three downsamplings: 16 px down to 1
        return 16
    return side if name.startswith(FIXED_INPUT) else 8 if side <= 32 else 32


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("in_channels,classes,mode", [(1, 3, "batch"), (3, 7, None)])
def test_every_model_trains_and_evaluates(name, in_channels, classes, mode):
    side = tiny_side(name)
    with torch.device("meta"):
        shapes = create_model(name, num_classes=classes, in_channels=in_channels)
        if meta_only(name, shapes, side):
            assert len(gated_blocks(shapes)) == BLOCKS.get(name, -1)
            assert shapes(torch.empty(2, in_channels, side, side)).shape == (2, classes)
            return
    torch.manual_seed(0)
    model = create_model(name, num_classes=classes, in_channels=in_channels).train()
    blocks = gated_blocks(model)
    if name in BLOCKS:
        assert len(blocks) == BLOCKS[name]
    assert len(blocks) > 0
    x = torch.randn(2, in_channels, side, side)
    skipped: set[int] = set()
    scope = contextlib.nullcontext(None)
    if mode is not None:  # half the blocks dropped, as stochastic depth does it
        set_survival(model, [0.5] * len(blocks))
        scope = GateSampler(model, mode, seed=0).install(step=0, batch_size=2)
    with scope as gates:
        logits = model(x)
    if gates is not None:
        skipped = {id(p) for (_, b), g in zip(blocks, gates.tolist()) if g == 0.0
                   for p in b.branch.parameters()}
        assert 0 < len(skipped) < count_params(model)
    assert logits.shape == (2, classes)
    F.cross_entropy(logits, torch.tensor([0, classes - 1])).backward()
    for p in model.parameters():
        assert (p.grad is None) == (id(p) in skipped)
        assert p.grad is None or bool(torch.isfinite(p.grad).all())
    model.eval()
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, classes) and bool(torch.isfinite(out).all())
        assert torch.equal(model(x), out)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenet_v2"])
def test_torchvision_adapters_compute_torchvisions_function(arch):
    # Same layers in the same order: copying the weights across must give the same logits.
    torch.manual_seed(0)
    ours = create_model(arch if arch == "mobilenet_v2" else f"tv_{arch}", num_classes=5).eval()
    theirs = getattr(tvm, arch)(weights=None, num_classes=5).eval()
    src = [v for k, v in ours.state_dict().items() if not k.endswith("survival")]
    dst = theirs.state_dict()
    assert [v.shape for v in src] == [v.shape for v in dst.values()]
    theirs.load_state_dict(dict(zip(dst, src)))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)
    assert count_params(ours) == count_params(theirs)


@pytest.mark.parametrize("name,first", [("tv_resnet18", "conv1"), ("mobilenet_v2", "features.0.0")])
def test_a_new_first_convolution_is_initialised_like_torchvisions(name, first):
    torch.manual_seed(0)
    conv = create_model(name, num_classes=10, in_channels=1).get_submodule(first)
    assert conv.in_channels == 1
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    # Kaiming normal, fan_out, ReLU gain; PyTorch's default would be about 2.3x (MobileNet) to 3x wider.
    assert float(conv.weight.detach().std()) == pytest.approx((2 / fan_out) ** 0.5, rel=0.15)


def test_torchvision_builders_take_torchvisions_keyword_arguments():
    model = create_model("tv_resnet18", num_classes=10, zero_init_residual=True)
    assert all(not b.branch[-1].weight.detach().any() for _, b in gated_blocks(model))  # last BN of each
    narrow = create_model("mobilenet_v2", num_classes=10, width_mult=0.5)
    assert count_params(narrow) < count_params(create_model("mobilenet_v2", num_classes=10))


def test_counting_flops_keeps_the_models_mode_even_on_error():
    model = create_model("resnet20", num_classes=10, in_channels=1).train()
    assert count_flops(model, (1, 8, 8)) > 0 and model.training
    with pytest.raises(RuntimeError):
        count_flops(model, (3, 8, 8))  # wrong number of channels
    assert model.training


@pytest.mark.parametrize("name,blocks,params,mflops", [
    ("resnet20", 9, 269_722, 81.10),      # He et al. 2016: 0.27M parameters
    ("resnet110", 54, 1_727_962, 505.78),  # 1.7M
    ("mobilenet_v2", 10, 2_236_682, 599.01),
    ("tv_resnet18", 8, 11_181_642, 3627.13),
])
def test_describe_model_counts(name, blocks, params, mflops):
    d = describe_model(name, num_classes=10)
    assert d["name"] == name
    assert d["blocks"] == blocks
    assert d["params"] == params
    assert d["flops"] / 1e6 == pytest.approx(mflops, abs=0.01)
    assert d["input"] == list(model_info(name).default_input)


def test_paper_parameter_counts_of_cifar_resnets():
    # He et al. 2016, Table 6 (option A shortcuts): 0.46M, 0.66M, 0.85M; ResNet-1202 19.4M.
    for name, millions in (("resnet32", 0.46), ("resnet44", 0.66), ("resnet56", 0.85)):
        assert count_params(create_model(name, 10)) / 1e6 == pytest.approx(millions, abs=0.005)


def test_names_are_unambiguous():
    names = list_models()
    assert len(names) == len(set(names))
    assert {"cifar_resnet152", "tv_resnet152"} <= set(names)
    assert "resnet152" not in names  # two different 152-layer networks: no bare name
    with pytest.raises(SdpruneError, match="did you mean"):
        model_info("resnet152")
    assert "not torchvision" in model_info("cifar_resnet152").description


def test_models_list_each_family_by_size():
    names = list_models()
    for family in (["tv_vit_b_16", "tv_vit_b_32", "tv_vit_l_16", "tv_vit_l_32", "tv_vit_h_14"],
                   ["tv_swin_t", "tv_swin_s", "tv_swin_b", "tv_swin_v2_t", "tv_swin_v2_s", "tv_swin_v2_b"],
                   [f"tv_efficientnet_b{i}" for i in range(8)] + ["tv_efficientnet_v2_s", "tv_efficientnet_v2_m",
                                                                  "tv_efficientnet_v2_l"],
                   ["tv_regnet_x_400mf", "tv_regnet_x_1_6gf", "tv_regnet_x_32gf", "tv_regnet_y_400mf",
                    "tv_regnet_y_128gf"], ["resnet20", "resnet110", "resnet1202"]):
        at = [names.index(n) for n in family]
        assert at == sorted(at), family


def test_bad_arguments_are_clear_errors():
    with pytest.raises(SdpruneError, match="unknown model"):
        create_model("resnet21", num_classes=10)
    with pytest.raises(SdpruneError, match="positive"):
        create_model("resnet20", num_classes=0)
    with pytest.raises(SdpruneError, match="6n \\+ 2"):
        from sdprune.nets.cifar_resnet import CifarResNet
        CifarResNet(depth=21)
