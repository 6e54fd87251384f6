"""torchvision's weights in sdprune's gated networks and back: keys, exactness, refusals."""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from sdprune.depth.schedule import set_survival
from sdprune.depth.structure import gated_blocks, remove_blocks
from sdprune.errors import SdpruneError
from sdprune.nets import (
    adopt_weights,
    create_model,
    detect_arch,
    from_gated,
    load_state_dict_file,
    to_gated,
)
from sdprune.nets.convert import adapt_input_conv

ARCHS = {"tv_resnet18": "resnet18", "tv_resnet34": "resnet34", "tv_resnet50": "resnet50",
         "tv_resnet101": "resnet101", "tv_resnet152": "resnet152", "mobilenet_v2": "mobilenet_v2"}


def trained_like(arch: str, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """torchvision's network with random weights, in eval, made to look trained: BatchNorms
    with random affine parameters and running statistics near those of real activations
    (so the logits depend on the input and a wrong mapping changes them), a unit-gain head."""
    torch.manual_seed(seed)
    model = getattr(tvm, arch)(weights=None, num_classes=num_classes)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in norms:
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.2)
            m.momentum = None  # the running statistics of this one batch
        model.train()(torch.randn(4, 3, 64, 64))
        for m in norms:
            m.momentum = 0.1
            m.running_mean.add_(torch.randn_like(m.running_mean) * 0.1 * m.running_var.sqrt())
            m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.8, 1.25))
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        head.weight.normal_(0, head.in_features ** -0.5)
    return model.eval()


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def refused(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(SdpruneError, match=match) as err:
        fn(*args, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("name,arch", ARCHS.items())
def test_keys_go_to_the_gated_layout_and_back_unchanged(name, arch):
    with torch.device("meta"):  # torchvision's own keys and shapes, without initialising
        keys = getattr(tvm, arch)(weights=None).state_dict()
    state = {k: torch.randn(v.shape) if v.is_floating_point() else torch.tensor(7) for k, v in keys.items()}
    gated = to_gated(state, name)
    with torch.device("meta"):
        model = create_model(name, num_classes=1000)
    model.load_state_dict(gated, assign=True)  # strict: every key and shape of sdprune's network
    blocks = gated_blocks(model)
    assert len(gated) == len(state) + len(blocks)
    assert all(float(gated[f"{n}.survival"]) == 1.0 for n, _ in blocks)
    back = from_gated(gated, arch)
    assert list(back) == list(state)
    assert all(back[k] is state[k] for k in state)  # shared, never copied or altered


def test_the_mapping_renames_what_the_gated_block_re_wraps():
    state50 = {k: v for k, v in trained_like("resnet50").state_dict().items()}
    gated = to_gated(state50, "resnet50")
    assert gated["layer1.0.branch.6.weight"] is state50["layer1.0.conv3.weight"]
    assert gated["layer1.0.shortcut.1.running_var"] is state50["layer1.0.downsample.1.running_var"]
    assert gated["conv1.weight"] is state50["conv1.weight"] and gated["fc.bias"] is state50["fc.bias"]
    mobile = to_gated(trained_like("mobilenet_v2").state_dict(), "mobilenet_v2")
    assert "features.3.branch.1.0.weight" in mobile  # a skip: gated
    assert "features.2.conv.1.0.weight" in mobile  # changes shape: no skip, left as it is


@pytest.mark.parametrize("name,arch", ARCHS.items())
def test_an_adopted_network_computes_torchvisions_logits(name, arch):
    theirs = trained_like(arch)
    ours, info = adopt_weights(theirs.state_dict(), name, num_classes=10)
    assert info == {"arch": name, "source": "torchvision", "kwargs": {}, "new_head": False, "weights_classes": 10,
                    "num_classes": 10, "input_conv": "kept", "weights_in_channels": 3, "in_channels": 3}
    side = 32 if arch in ("resnet101", "resnet152") else 64
    x = torch.randn(2, 3, side, side)
    expected = logits(theirs, x)
    assert (expected[0] - expected[1]).abs().max() > 0.1  # a network whose logits depend on its input
    torch.testing.assert_close(logits(ours, x), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenet_v2"])
def test_survivals_fold_into_the_branch_so_torchvision_computes_the_gated_function(arch):
    ours, _ = adopt_weights(trained_like(arch).state_dict(), arch)
    n = len(gated_blocks(ours))
    set_survival(ours, [0.0] + torch.linspace(0.3, 0.9, n - 1).tolist())  # 0: the branch counts for nothing
    x = torch.randn(2, 3, 64, 64)
    expected = logits(ours, x)
    theirs = getattr(tvm, arch)(weights=None, num_classes=10)
    theirs.load_state_dict(from_gated(ours.state_dict(), arch))
    torch.testing.assert_close(logits(theirs, x), expected, atol=1e-5, rtol=1e-5)
    ones = {k: torch.ones(()) if k.endswith(".survival") else v for k, v in ours.state_dict().items()}
    theirs.load_state_dict(from_gated(ones, arch))  # what not folding would give
    assert not torch.allclose(logits(theirs, x), expected, atol=1e-3)


def test_a_pruned_network_cannot_go_back():
    model = create_model("tv_resnet18", num_classes=10)
    remove_blocks(model, ["layer3.1"])
    refused("1 of tv_resnet18's blocks were removed \\(e.g. layer3.1\\)", from_gated,
            model.state_dict(), "tv_resnet18")
    refused("not in sdprune's gated layout", from_gated, trained_like("resnet18").state_dict(), "resnet18")


def test_another_number_of_classes_keeps_the_backbone_and_gives_a_new_head():
    theirs = trained_like("resnet18", num_classes=1000)
    state = theirs.state_dict()
    ours, info = adopt_weights(state, "resnet18", num_classes=3)
    assert info["new_head"] and info["weights_classes"] == 1000 and info["num_classes"] == 3
    back = from_gated(ours.state_dict(), "resnet18")
    assert back["fc.weight"].shape == (3, 512) and back["fc.bias"].shape == (3,)
    assert not torch.equal(back["fc.weight"], state["fc.weight"][:3])
    assert all(torch.equal(back[k], v) for k, v in state.items() if not k.startswith("fc."))
    x = torch.randn(1, 3, 64, 64)
    features = nn.Sequential(*list(theirs.children())[:-1])  # everything up to the head
    torch.testing.assert_close(logits(ours, x), logits(features, x).flatten(1) @ back["fc.weight"].T
                               + back["fc.bias"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_one_channel_input_sees_what_rgb_sees_for_the_grey_image(arch):
    theirs = trained_like(arch)
    ours, info = adopt_weights(theirs.state_dict(), arch, in_channels=1)
    assert info["input_conv"] == "summed" and info["weights_in_channels"] == 3 and info["in_channels"] == 1
    grey = torch.randn(2, 1, 64, 64)
    torch.testing.assert_close(logits(ours, grey), logits(theirs, grey.expand(-1, 3, -1, -1)),
                               atol=1e-5, rtol=1e-5)


def test_other_channel_counts_repeat_and_rescale_the_rgb_filters():
    w = torch.randn(8, 3, 7, 7)
    four = adapt_input_conv(w, 4)
    torch.testing.assert_close(four, torch.cat([w, w[:, :1]], 1) * 0.75)
    assert adapt_input_conv(w, 3) is w
    _, info = adopt_weights(trained_like("resnet18").state_dict(), "resnet18", in_channels=4)
    assert info["input_conv"] == "repeated"


def test_the_architecture_is_recognised_from_the_weights():
    r18 = trained_like("resnet18", num_classes=5).state_dict()
    assert detect_arch(r18) == "tv_resnet18"
    assert detect_arch(trained_like("resnet34").state_dict()) == "tv_resnet34"
    assert detect_arch(trained_like("mobilenet_v2").state_dict()) == "mobilenet_v2"
    assert detect_arch({k: v for k, v in r18.items() if k != "layer4.1.conv2.weight"}) is None
    info = adopt_weights(r18, None)[1]
    assert info["arch"] == "tv_resnet18" and info["num_classes"] == 5


def test_weights_that_do_not_fit_are_refused_naming_what_does_not_match():
    r18 = trained_like("resnet18").state_dict()
    refused("weights look like tv_resnet34 \\(torchvision resnet34\\), not tv_resnet18",
            adopt_weights, trained_like("resnet34").state_dict(), "tv_resnet18")
    refused("weights look like tv_resnet18 .*, not tv_resnet50", to_gated, r18, "resnet50")
    missing = dict(r18)
    for key in [k for k in r18 if k.startswith("layer4.") and not k.endswith("num_batches_tracked")][:12]:
        del missing[key]
    refused("weights do not fit tv_resnet18: missing 12 keys \\(e.g. layer4.0.conv1.weight\\)",
            adopt_weights, missing, "tv_resnet18")
    refused("1 unexpected key \\(e.g. extra.weight\\)", adopt_weights, {**r18, "extra.weight": torch.ones(1)},
            "resnet18")
    shaped = {**r18, "layer1.0.conv1.weight": torch.ones(32, 64, 3, 3)}
    refused("layer1.0.conv1.weight is 32x64x3x3 in the weights, 64x64x3x3 in tv_resnet18",
            adopt_weights, shaped, "resnet18")
    refused("gated layout", adopt_weights, create_model("tv_resnet18", 10).state_dict(), "tv_resnet18")
    refused(r"weights look like tv_resnet18 \(torchvision resnet18\), not resnet20", adopt_weights, r18, "resnet20")
    refused("'resnet19' has no weights layout sdprune adopts", adopt_weights, r18, "resnet19")
    refused(r"look like tv_resnet18 but do not fit it: missing \d+ keys? \(e.g. layer4",
            adopt_weights, missing, None)
    refused("a state dict \\(names -> tensors\\), not a dict with non-tensor entries \\(e.g. 'epoch': int\\)",
            adopt_weights, {**r18, "epoch": 3}, "resnet18")
    # BatchNorm step counters are optional (old files, torchvision's own among them, lack them)
    old = {k: v for k, v in r18.items() if not k.endswith("num_batches_tracked")}
    assert adopt_weights(old, "resnet18")[1]["arch"] == "tv_resnet18"


def test_weight_files_are_read_as_people_save_them(tmp_path):
    state = trained_like("resnet18").state_dict()
    for i, saved in enumerate([state, {"state_dict": state, "epoch": 3}, {"model": state, "optimizer": {}},
                               {f"module.{k}": v for k, v in state.items()}]):
        torch.save(saved, tmp_path / f"{i}.pth")
        loaded = load_state_dict_file(tmp_path / f"{i}.pth")
        assert list(loaded) == list(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    model, info = adopt_weights(tmp_path / "0.pth", "resnet18")
    assert info["arch"] == "tv_resnet18"
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(logits(model, x), logits(trained_like("resnet18"), x), atol=1e-5, rtol=0)


def test_files_that_are_not_state_dicts_are_refused(tmp_path):
    torch.save(tvm.resnet18(weights=None), tmp_path / "module.pt")
    refused("holds pickled Python objects \\(torchvision.models.resnet.ResNet: .* save model.state_dict\\(\\) "
            "instead", load_state_dict_file, tmp_path / "module.pt")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pt")
    refused("holds a dict with non-tensor entries \\(e.g. 'epoch': int\\), not a state dict",
            load_state_dict_file, tmp_path / "meta.pt")
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    refused("holds a list, not a state dict", load_state_dict_file, tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a weights file at all")
    refused("is not a PyTorch weights file", load_state_dict_file, tmp_path / "junk.pt")
    refused("not found", load_state_dict_file, tmp_path / "absent.pt")
