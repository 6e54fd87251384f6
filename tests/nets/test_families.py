"""Every torchvision family, through one table (tests/nets/family_rows.py; a new family is a
new row): a tiny configuration built by torchvision's own constructor is adopted exactly both
ways, with its prior survivals folded; removal, a training step that skips a closed block, a
retrofit that starts from the adopted function and ONNX export with parity. The full-size
variants are checked on the meta device in test_families_full_size.py.

MobileNetV2 (prior survival 1: tensors shared, nothing folded) is checked in test_convert.py."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.convnext import CNBlock, CNBlockConfig
from torchvision.ops import StochasticDepth

from sdprune.deploy.export import export_onnx
from sdprune.depth.gates import GateSampler, gating
from sdprune.depth.schedule import get_survival, set_survival, survival_schedule
from sdprune.depth.structure import block_layout, block_names, forward_flops, gated_blocks, remove_blocks
from sdprune.errors import SdpruneError
from sdprune.nets import adopt_weights, create_model, from_gated, gate_residual_blocks, to_gated
from sdprune.nets.layout import torchvision_layout
from sdprune.prune.heal import NO_BATCHNORM, bn_statistics, has_batchnorm, heal_bn, recalibrate_bn
from sdprune.train.adopt import Adopted
from sdprune.train.config import TrainConfig
from sdprune.train.trainer import build_training
from tests.nets.family_rows import IDS, ROWS, applied_rates, check_rule, logits, random_bundle, theirs


def refused(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(SdpruneError, match=match) as err:
        fn(*args, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


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


# linear folds s / s' into every family's output scales; none (the plain twin, s' = 1) folds
# something only where the adopted network has priors below 1: elsewhere it would change nothing
RETROFITS = [(row, "linear") for row in ROWS] + [(row, "none") for row in ROWS if row.drop > 0]


@pytest.mark.parametrize("row,survival", RETROFITS, ids=[f"{r.family}-{s}" for r, s in RETROFITS])
def test_a_retrofit_starts_from_the_adopted_function(row, survival):
    data = random_bundle()
    model, _ = adopt_weights(theirs(row, classes=4).state_dict(), row.model, **row.kwargs)
    adopted = Adopted(model.eval(), row.model, [], row.kwargs, data.mean, data.std)
    config = TrainConfig(init="adopted.pt", model=row.model, survival=survival, batch_size=8, device="cpu")
    trainer = build_training(config, data, torch.device("cpu"), adopted=adopted)
    schedule = survival_schedule(survival, len(gated_blocks(model)))
    assert get_survival(model) != pytest.approx(schedule)  # a case that folds something
    assert get_survival(trainer.model) == pytest.approx(schedule)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    # the same function, to float rounding (each branch's output scale multiplied by s / s'):
    # 1.5e-5 on a logit of 0.3 was seen through a ResNeXt's 8 blocks on a loaded machine, hence
    # 1e-4; a wrong fold is off by ~1e-2
    torch.testing.assert_close(logits(trainer.model, x), logits(model, x), atol=1e-4, rtol=1e-4)


# The rows whose operators no other export test covers: attention (ViT; Swin's shifted windows,
# SwinV2's cosine attention and position bias, MaxViT's block and grid partitions), EfficientNet's
# squeeze-excitation and depthwise convolutions, EfficientNetV2's output scale sdprune adds.
# ConvNeXt, RegNet, ResNet and MobileNetV3 are made of those ops and of what resnet20 exports in
# tests/deploy, but for ResNet's max-pool stem and MobileNetV3's hard-swish and hard-sigmoid
# (plain ONNX operators, exported nowhere else: rows 9 s and 14 s of dynamo export each).
EXPORTED = [r for r in ROWS if r.family in {"ViT", "Swin", "SwinV2", "MaxViT", "EfficientNet", "EfficientNetV2"}]


@pytest.mark.long
@pytest.mark.parametrize("row", EXPORTED, ids=[r.family for r in EXPORTED])
def test_export_keeps_parity(row, tmp_path):
    data = random_bundle()
    model, _ = adopt_weights(theirs(row, classes=4).state_dict(), row.model, **row.kwargs)
    names = block_names(model)
    remove_blocks(model, names[1:2])
    meta = {"model": {"name": row.model, "kwargs": row.kwargs}, "blocks": names, "removed": names[1:2],
            "data": {"dataset": data.name, "classes": data.classes, "input_shape": [3, 32, 32], "mean": data.mean,
                     "std": data.std}}
    # one batch size, not the export's example batch of 2: the batch axis is dynamic
    record = export_onnx(model, meta, tmp_path, data=data, samples=8, batch_sizes=(8,))
    assert [r["batch"] for r in record["parity"]["batches"]] == [8]
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
