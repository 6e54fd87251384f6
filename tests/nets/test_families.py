"""Every torchvision family trained with stochastic depth, through one table (a new family
is a new row): a tiny configuration built by torchvision's own constructor is adopted
exactly both ways, with its prior survivals folded; removal, a training step that skips a
closed block and ONNX export with parity; the full-size variants on the meta device only.

ResNet and MobileNetV2 (prior survival 1: tensors shared, nothing folded) are checked in
test_convert.py."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn
from torchvision.models.convnext import CNBlock, CNBlockConfig, ConvNeXt
from torchvision.ops import StochasticDepth

from sdprune.data.bundle import DataBundle, channel_stats
from sdprune.data.images import ImageSet
from sdprune.deploy.export import export_onnx
from sdprune.depth.gates import GateSampler, gating
from sdprune.depth.schedule import get_survival, set_survival
from sdprune.depth.structure import block_layout, block_names, gated_blocks, remove_blocks
from sdprune.errors import SdpruneError
from sdprune.nets import adopt_weights, create_model, detect_arch, from_gated, gate_residual_blocks, to_gated
from sdprune.nets.layout import torchvision_layout
from sdprune.nets.registry import describe_model
from sdprune.nets.torchvision_nets import TORCHVISION_ARCHS, families


@dataclasses.dataclass(frozen=True)
class Row:
    family: str  # the adapter's Family.name
    model: str  # sdprune's name the tiny configuration is built under
    kwargs: dict  # its builder arguments (JSON-able: what a checkpoint records)
    torchvision: Callable[[int], nn.Module]  # the same network from torchvision's own constructor
    drop: float  # its stochastic_depth_prob (0: trained without stochastic depth, every prior 1)
    defaults: dict  # each full-size variant -> torchvision's stochastic_depth_prob for it (0: none)


TINY_CONVNEXT = [[16, 32, 2], [32, 48, 2], [48, None, 2]]
ROWS = [
    Row("ConvNeXt", "tv_convnext_tiny", {"block_setting": TINY_CONVNEXT, "stochastic_depth_prob": 0.3},
        lambda classes: ConvNeXt([CNBlockConfig(*c) for c in TINY_CONVNEXT], stochastic_depth_prob=0.3,
                                 num_classes=classes), 0.3,
        {"tv_convnext_tiny": 0.1, "tv_convnext_small": 0.4, "tv_convnext_base": 0.5, "tv_convnext_large": 0.5}),
]
COVERED_ELSEWHERE = {"ResNet", "MobileNetV2"}  # test_convert.py
IDS = [r.family for r in ROWS]


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with weights that look trained: every parameter torchvision initialises to a
    constant (norm affines, biases, layer scales) made random, BatchNorm statistics near those
    of real activations, a unit-gain head, so every layer moves the logits and a wrong
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
            model.train()(torch.randn(4, 3, 32, 32))
        for m in norms:
            m.momentum = 0.1
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
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
    rates = [m.p for m in tv.modules() if isinstance(m, StochasticDepth)] or [0.0] * blocks  # none: trained whole
    assert get_survival(ours) == pytest.approx([1 - p for p in rates], abs=1e-7)
    assert get_survival(ours)[0] == 1.0 and get_survival(ours)[-1] == pytest.approx(1 - row.drop)
    assert not any(isinstance(m, StochasticDepth) for m in ours.modules())  # the gate replaced them
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
    torch.testing.assert_close(features["ours"], features["theirs"], atol=1e-5, rtol=1e-5)


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
    assert set(left) == {k for k in before if not any(k.startswith(f"{n}.") for n in cut)}
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


FULL_SIZE = [(row, name) for row in ROWS for name in row.defaults]


@pytest.mark.parametrize("row,name", FULL_SIZE, ids=[n for _, n in FULL_SIZE])
def test_full_size_variants_convert_on_the_meta_device(row, name):
    with torch.device("meta"):  # shapes only: nothing initialised, nothing downloaded
        tv = getattr(tvm, TORCHVISION_ARCHS[name])(weights=None)
        model = create_model(name, num_classes=1000)
    lay = torchvision_layout(name)
    rates = [m.p for m in tv.modules() if isinstance(m, StochasticDepth)] or [0.0] * len(lay.blocks)
    assert rates[-1] == pytest.approx(row.defaults[name])  # torchvision's linear rule, up to the variant's rate
    assert [b.prior for b in lay.blocks] == pytest.approx([1 - p for p in rates])
    state = tv.state_dict()
    gated = to_gated(state, name)
    model.load_state_dict(gated, assign=True)  # strict: every key and shape of the gated network
    assert len(gated_blocks(model)) == len(rates)
    back = from_gated(gated, name)
    assert list(back) == list(state) and all(back[k].shape == v.shape for k, v in state.items())
    assert detect_arch(state) == name
    described = describe_model(name, 1000)
    assert described["blocks"] == len(rates) and described["params"] == sum(p.numel() for p in tv.parameters())


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
