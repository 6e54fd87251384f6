"""The public CIFAR ResNets' weights in sdprune's networks and back, checked against a
reference implementation written here from the paper's description (He et al. 2016,
section 4.2, option A: the shortcut subsamples by 2 and zero-pads planes // 4 channels on
each side), not from sdprune's code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdprune.depth.schedule import set_survival
from sdprune.depth.structure import gated_blocks, remove_blocks
from sdprune.errors import SdpruneError
from sdprune.nets.cifar_layout import cifar_layout
from sdprune.nets import adopt_weights, create_model, detect_arch, from_gated, load_state_dict_file, to_gated

PRETRAINED = Path(__file__).resolve().parents[3] / "shared" / "data" / "pretrained"
DEPTHS = (20, 32, 44, 56, 110)


class PadBothSides(nn.Module):
    """Option A: subsample by 2, pad planes // 4 zero channels before and after."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.planes = planes

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.planes // 4, self.planes // 4))


def shortcut(cin: int, planes: int, option: str) -> nn.Module:
    if option == "B":  # a 1x1 projection, as nn.Sequential(conv, bn): keys shortcut.0.*, shortcut.1.*
        return nn.Sequential(nn.Conv2d(cin, planes, 1, 2, bias=False), nn.BatchNorm2d(planes))
    return PadBothSides(planes)


class Basic(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int, option: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = shortcut(cin, planes, option) if stride != 1 or cin != planes else nn.Sequential()

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class Reference(nn.Module):
    """ResNet-(6n+2) for CIFAR, named as the published weights name their tensors."""

    def __init__(self, depth: int, num_classes: int = 10, option: str = "A") -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                blocks.append(Basic(cin, planes, 2 if i and not j else 1, option))
                cin = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


def trained_like(depth: int, option: str = "A", seed: int = 0) -> Reference:
    """The reference with random weights and BatchNorms that look trained (random affine
    parameters and running statistics), so a wrong channel mapping changes the logits."""
    torch.manual_seed(seed)
    model = Reference(depth, option=option)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def as_published(model: nn.Module, path: Path) -> Path:
    """Saved as the public files are: {"best_prec1", "state_dict"}, DataParallel's "module."
    prefix, no num_batches_tracked."""
    state = {f"module.{k}": v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"best_prec1": 91.7, "state_dict": state}, path)
    return path


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("depth", DEPTHS)
def test_adopted_weights_compute_the_reference_logits_and_go_back_unchanged(depth, tmp_path):
    theirs = trained_like(depth, seed=depth)
    file = as_published(theirs, tmp_path / f"resnet{depth}.th")
    ours, info = adopt_weights(file, None)
    assert info["arch"] == f"resnet{depth}" and info["source"] == "cifar-resnet" and info["kwargs"] == {}
    x = torch.randn(6, 3, 32, 32)
    assert torch.allclose(logits(ours, x), logits(theirs, x), atol=1e-5, rtol=0)
    back = from_gated(ours.state_dict(), f"resnet{depth}")
    for key, tensor in load_state_dict_file(file).items():
        assert torch.equal(back[key], tensor), key


def test_option_b_shortcuts_adopt_as_sdprunes_conv_shortcut(tmp_path):
    theirs = trained_like(20, option="B")
    ours, info = adopt_weights(as_published(theirs, tmp_path / "b.th"), "resnet20")
    assert info["kwargs"] == {"shortcut": "conv"}
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(logits(ours, x), logits(theirs, x), atol=1e-5, rtol=0)
    assert set(from_gated(ours.state_dict(), "resnet20")) == set(theirs.state_dict())


def test_survival_is_folded_so_the_source_network_computes_the_gated_one(tmp_path):
    ours, _ = adopt_weights(trained_like(20).state_dict(), "resnet20")
    set_survival(ours, [0.9 - 0.05 * i for i in range(len(gated_blocks(ours)))])
    theirs = Reference(20)
    theirs.load_state_dict(from_gated(ours.state_dict(), "resnet20"))
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(logits(theirs, x), logits(ours, x), atol=1e-5, rtol=0)


def test_the_stream_permutation_is_needed_not_a_no_op():
    """Loading the published tensors into sdprune's network by name alone (no reordering)
    computes another function: the test above would catch a layout that forgot to permute."""
    theirs = trained_like(20)
    gated = to_gated(theirs.state_dict(), "resnet20")
    plain = {g: theirs.state_dict()[s] for s, g in cifar_layout(20).to_gated.items() if s in theirs.state_dict()}
    model = create_model("resnet20", 10)
    model.load_state_dict({**gated, **plain})
    x = torch.randn(4, 3, 32, 32)
    assert (logits(model, x) - logits(theirs, x)).abs().max() > 1e-2


def test_a_new_head_for_other_classes_keeps_the_backbone(tmp_path):
    theirs = trained_like(20)
    ours, info = adopt_weights(theirs.state_dict(), "resnet20", num_classes=3)
    assert info["new_head"] and info["weights_classes"] == 10
    assert ours.head[2].out_features == 3
    features = {}
    ours.head[2].register_forward_hook(lambda m, a, o: features.setdefault("ours", a[0]))
    theirs.linear.register_forward_hook(lambda m, a, o: features.setdefault("theirs", a[0]))
    x = torch.randn(4, 3, 32, 32)
    logits(ours, x), logits(theirs, x)
    # the pooled features are the same channels, reordered as the stream is
    assert torch.allclose(features["ours"].sort(1).values, features["theirs"].sort(1).values, atol=1e-5)


def test_the_architecture_is_recognised_from_the_tensors():
    assert detect_arch(trained_like(32).state_dict()) == "resnet32"
    assert detect_arch(trained_like(20, option="B").state_dict()) == "resnet20"
    assert detect_arch({"conv1.weight": torch.ones(16, 3, 3, 3)}) is None


def refused(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(SdpruneError, match=match) as err:
        fn(*args, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_a_file_that_does_not_fit_is_refused_in_one_line_naming_the_first_mismatch(tmp_path):
    state = trained_like(20).state_dict()
    refused("weights look like resnet20 .*not resnet56", adopt_weights, state, "resnet56")
    missing = {k: v for k, v in state.items() if k != "layer2.1.conv2.weight"}
    refused(r"weights do not fit resnet20: missing 1 key \(e.g. layer2.1.conv2.weight\)",
            adopt_weights, missing, "resnet20")
    wide = {**state, "layer3.0.conv1.weight": torch.ones(64, 32, 3, 1)}
    refused(r"layer3.0.conv1.weight is 64x32x3x1 in the weights, 64x32x3x3 in resnet20", adopt_weights, wide,
            "resnet20")
    refused(r"look like resnet20 but do not fit it: missing 1 key \(e.g. layer2.1.conv2.weight\)",
            adopt_weights, missing, None)
    refused("none of the architectures sdprune adopts", adopt_weights, {"encoder.weight": torch.ones(2)}, None)
    no_bias = {**state, "linear.bias": torch.ones(0)}
    refused("the classifier's linear.weight has 10 rows and linear.bias 0 values", adopt_weights, no_bias, "resnet20")
    refused("'resnet21' has no weights layout", adopt_weights, state, "resnet21")


def test_a_pruned_network_has_no_published_equivalent():
    ours, _ = adopt_weights(trained_like(20).state_dict(), "resnet20")
    remove_blocks(ours, ["stages.1.1"])
    refused(r"1 of resnet20's blocks were removed \(e.g. stages.1.1\)", from_gated, ours.state_dict(), "resnet20")


@pytest.mark.skipif(not PRETRAINED.is_dir(), reason="the published CIFAR ResNets (../shared/data/pretrained) "
                    "are not beside this checkout")
@pytest.mark.parametrize("depth", (20, 32, 56))
def test_the_published_files_adopt_exactly(depth):
    file = next(PRETRAINED.glob(f"resnet{depth}-*.th"))
    theirs = Reference(depth)
    theirs.load_state_dict(load_state_dict_file(file), strict=False)  # no num_batches_tracked in them
    ours, info = adopt_weights(file, None)
    assert info["arch"] == f"resnet{depth}"
    x = torch.randn(8, 3, 32, 32)
    assert torch.allclose(logits(ours, x), logits(theirs, x), atol=1e-5, rtol=0)
