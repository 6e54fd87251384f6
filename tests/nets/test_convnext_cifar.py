"""convnext_cifar: torchvision's ConvNeXt class at CIFAR size (benchmark B7's convolutional
network), with torchvision's own stochastic-depth rule recorded, a plain twin, and a
`sdprune train` run on a folder of 32-px images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt, LayerNorm2d
from torchvision.ops import StochasticDepth

from sdprune.cli import main
from sdprune.depth.schedule import get_survival, survival_schedule
from sdprune.depth.structure import gated_blocks
from sdprune.errors import SdpruneError
from sdprune.nets.registry import create_model, describe_model
from sdprune.train.checkpoint import load_checkpoint

SETTING = [[32, 64, 2], [64, 128, 2], [128, 256, 6], [256, None, 2]]


def torchvisions(drop: float, classes: int = 10) -> nn.Module:
    """The same network built by torchvision's constructor, its stem made patch 2 by hand."""
    tv = ConvNeXt([CNBlockConfig(*c) for c in SETTING], stochastic_depth_prob=drop, num_classes=classes)
    tv.features[0][0] = nn.Conv2d(3, 32, kernel_size=2, stride=2)
    tv.features[0][1] = LayerNorm2d(32, eps=1e-6)
    return tv


def sides(model: nn.Module, channels: int) -> list[int]:
    """The side of each gated block's output on a 32-px image."""
    out: list[int] = []
    hooks = [b.register_forward_hook(lambda m, a, o: out.append(o.shape[-1])) for _, b in gated_blocks(model)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, channels, 32, 32))
    for hook in hooks:
        hook.remove()
    return out


def test_it_is_torchvisions_convnext_at_cifar_size_with_its_drop_rule_recorded():
    torch.manual_seed(0)
    ours = create_model("convnext_cifar", 10).eval()
    tv = torchvisions(0.1).eval()
    rates = [m.p for m in tv.modules() if isinstance(m, StochasticDepth)]
    assert rates == pytest.approx([0.1 * i / 11 for i in range(12)])  # torchvision's linear rule up to 0.1
    assert get_survival(ours) == pytest.approx([1 - p for p in rates])
    with torch.no_grad():  # layer scales all at one initial value would hide a wrong mapping
        for name, p in ours.named_parameters():
            if name.endswith("layer_scale.scale"):
                p.normal_(0, 0.3)
    # the same function: torchvision's weights are ours with each survival folded back into its layer scale
    state = {}
    for key, value in ours.state_dict().items():
        if key.endswith(".survival"):
            continue
        if key.endswith("layer_scale.scale"):
            block = key[:-len(".branch.layer_scale.scale")]
            value = value * ours.get_submodule(block).survival
        state[key.replace("branch.", "").replace("layer_scale.scale", "layer_scale")] = value
    tv.load_state_dict(state)  # strict: every tensor of torchvision's network, nothing else
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = tv(x)
        assert (expected[0] - expected[1]).abs().max() > 0.1  # logits that depend on the input
        torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-5)
    assert sides(ours, 3) == [16] * 2 + [8] * 2 + [4] * 6 + [2] * 2  # a patch-2 stem: 32 px down to 2x2, as 224 goes to 7x7
    info = describe_model("convnext_cifar")
    assert (info["input"], info["blocks"]) == ([3, 32, 32], 12)
    assert info["params"] == sum(p.numel() for p in tv.parameters())
    assert info["flops"] < describe_model("resnet20")["flops"]  # cheaper than ResNet-20: a CPU budget affords it


def test_a_plain_twin_and_other_stems_through_the_builders_arguments():
    plain = create_model("convnext_cifar", 10, stochastic_depth_prob=0.0)
    assert get_survival(plain) == [1.0] * 12
    fine = create_model("convnext_cifar", 4, in_channels=1, patch_size=1)
    assert sides(fine, 1) == [32] * 2 + [16] * 2 + [8] * 6 + [4] * 2
    with pytest.raises(SdpruneError, match="patch_size is a positive whole number"):
        create_model("convnext_cifar", 10, patch_size=0)
    with pytest.raises(SdpruneError, match=r"stochastic_depth_prob is a drop rate in \[0, 1\)"):
        create_model("convnext_cifar", 10, stochastic_depth_prob=1.0)


def test_its_layer_scale_starts_where_sgd_can_train_it():
    """0.1 (CaiT's rule for 12 blocks), not torchvision's 1e-6; any value > 0 through the builder."""
    plain = create_model("convnext_cifar", 10, stochastic_depth_prob=0.0)
    scales = [p for n, p in plain.named_parameters() if n.endswith("layer_scale.scale")]
    assert len(scales) == 12 and all(torch.all(p == 0.1) for p in scales)
    other = create_model("convnext_cifar", 10, stochastic_depth_prob=0.0, layer_scale=1e-6)
    assert all(torch.all(p == 1e-6) for n, p in other.named_parameters() if n.endswith("layer_scale.scale"))
    for bad in (0.0, -1.0, float("nan"), "0.1", True):
        with pytest.raises(SdpruneError, match="layer_scale is a number > 0"):
            create_model("convnext_cifar", 10, layer_scale=bad)


def cifar_like(root, n: int = 8) -> None:
    """ROOT/{train,test}/{a,b}: 32-px JPEG images, one brightness per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c, cls in enumerate("ab"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(60 + 120 * c + rng.integers(-40, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.jpg")


def test_sdprune_train_trains_it_on_a_folder_of_cifar_sized_images(tmp_path, capsys):
    """B7's own-rate arm (test_vit_cifar.py trains the plain twin, --survival none)."""
    cifar_like(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", "--model", "convnext_cifar", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"),
                 "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--survival", "linear", "--p-last", "0.9",
                 "--device", "cpu", "--out", str(run), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["model"], summary["blocks"]) == ("convnext_cifar", 12) and summary["final"]["step"] >= 1
    meta = load_checkpoint(run)["meta"]
    # its own rule is sdprune's linear schedule to drop 0.1 (p_L = 0.9; a drop rate read as p_L would give 0.1)
    assert meta["survival"] == pytest.approx(survival_schedule("linear", 12, 0.9))
    assert main(["eval", str(run), "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["test"]["acc"] == pytest.approx(summary["final"]["test_acc"])
