"""The gated residual block: skipped branches cost nothing, eval is the expected value."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdprune.depth.block import GatedBlock, PrunedBlock
from sdprune.depth.gates import GateSampler, expected_gates, gating
from sdprune.depth.schedule import set_survival, survival_schedule
from sdprune.depth.structure import gated_blocks, remove_blocks
from sdprune.errors import SdpruneError
from sdprune.nets.cifar_resnet import basic_block
from sdprune.nets.registry import create_model


def count_calls(module: nn.Module) -> list[int]:
    """Hook every submodule of ``module``; the returned list counts forward calls."""
    calls = [0]

    def hook(*_):
        calls[0] += 1
    for m in module.modules():
        m.register_forward_hook(hook)
    return calls


@pytest.fixture
def block() -> GatedBlock:
    torch.manual_seed(0)
    return basic_block(8, 8, 1, "pad").train()


@pytest.fixture
def down_block() -> GatedBlock:
    torch.manual_seed(1)
    return basic_block(8, 16, 2, "pad").train()  # zero-padding projection shortcut


def test_dropped_branch_runs_no_forward_and_gets_no_gradient(block):
    calls = count_calls(block.branch)
    x = torch.randn(4, 8, 6, 6, requires_grad=True)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    with gating([block], [0.0]):
        y = block(x)
    y.sum().backward()
    assert calls[0] == 0
    assert all(p.grad is None for p in block.branch.parameters())
    assert torch.equal(y, F.relu(x))  # identity shortcut, ReLU
    # BN running statistics of a skipped branch do not move either.
    after = block.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("branch."))


def test_kept_branch_runs_and_gets_gradients(block):
    calls = count_calls(block.branch)
    x = torch.randn(4, 8, 6, 6)
    with gating([block], [1.0]):
        y = block(x)
    y.sum().backward()
    assert calls[0] > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.branch.parameters())
    assert torch.allclose(block(x), y)  # no gate (plain training) computes the same function
    assert torch.allclose(y, F.relu(x + block.branch(x)))


def test_sampler_skips_exactly_the_closed_gates_of_a_resnet():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=3).train()
    blocks = [b for _, b in gated_blocks(model)]
    set_survival(model, survival_schedule("linear", len(blocks), 0.5))
    counters = [count_calls(b.branch) for b in blocks]
    sampler = GateSampler(model, "batch", seed=0)
    step = next(s for s in range(100) if 0 < sampler.draw(s, 2).sum() < len(blocks))
    with sampler.install(step, 2) as drawn:
        loss = F.cross_entropy(model(torch.randn(2, 3, 16, 16)), torch.tensor([1, 2]))
    loss.backward()  # after the scope: backward needs no installed gate
    gates = drawn.tolist()
    for g, b, calls in zip(gates, blocks, counters):
        assert (calls[0] > 0) == (g == 1.0)
        assert all((p.grad is not None) == (g == 1.0) for p in b.branch.parameters())
    # The stem and head always train.
    assert all(p.grad is not None for p in model.stem.parameters())
    assert all(p.grad is not None for p in model.head.parameters())


def test_row_mode_masks_each_sample(down_block):
    x = torch.randn(6, 8, 8, 8)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    with gating([down_block], [mask]):
        y = down_block(x)
    # Training-mode BN uses batch statistics: the branch sees the whole batch either way.
    full = F.relu(down_block.shortcut(x) + down_block.branch(x))
    skipped = F.relu(down_block.shortcut(x))
    assert y.shape == (6, 16, 4, 4)
    for i, m in enumerate(mask.tolist()):
        assert torch.allclose(y[i], full[i] if m else skipped[i], atol=1e-6)


def test_a_row_mask_must_have_one_entry_per_sample(down_block):
    x = torch.randn(6, 8, 8, 8)
    for mask in (torch.ones(5), torch.ones(6, 1)):
        with gating([down_block], [mask]), pytest.raises(ValueError, match="for a batch of 6"):
            down_block(x)


def test_eval_scales_the_branch_by_survival_and_a_training_gate_does_not_leak(down_block):
    x = torch.randn(3, 8, 8, 8)
    with gating([down_block], [0.0]):
        down_block(x)  # a training step that dropped the block
    down_block(x)  # one training step's worth of BN statistics
    down_block.survival.fill_(0.3)
    down_block.eval()
    y1, y2 = down_block(x), down_block(x)
    assert torch.equal(y1, y2)
    expected = F.relu(down_block.shortcut(x) + 0.3 * down_block.branch(x))
    assert torch.allclose(y1, expected, atol=1e-6)
    # Installed explicitly, a gate wins in eval too: 0 is the removed block, survival the default.
    with gating([down_block], [0.0]):
        assert torch.equal(down_block(x), F.relu(down_block.shortcut(x)))
    with gating([down_block], [down_block.survival]):
        assert torch.equal(down_block(x), y1)


def test_replay_returns_the_cached_output_without_computing(block):
    calls = count_calls(block)
    cached = torch.randn(2, 8, 4, 4)
    with gating([block], replay=[cached]):
        out = block(torch.randn(2, 8, 4, 4))
    assert out is cached and calls[0] == 1  # only the block itself was entered


def test_eval_of_a_whole_net_is_deterministic_and_gate_free():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1)
    set_survival(model, survival_schedule("linear", 9, 0.5))
    x = torch.randn(2, 1, 8, 8)
    with GateSampler(model, "batch", seed=0).install(step=1, batch_size=2):
        model.train()(x)  # a training forward with drawn gates
    assert all(b.gate is None and b.replay is None for _, b in gated_blocks(model))
    model.eval()
    clean = model(x)
    assert torch.equal(model(x), clean)
    with expected_gates(model):  # the evaluated function, installed explicitly
        assert torch.equal(model(x), clean)


@pytest.mark.parametrize("which", ["block", "down_block"])
def test_removed_block_computes_act_of_shortcut(which, request):
    gated = request.getfixturevalue(which).eval()
    model = nn.Sequential(gated)
    x = torch.randn(2, 8, 8, 8)
    expected = F.relu(gated.shortcut(x))
    remove_blocks(model, ["0"])
    assert isinstance(model[0], PrunedBlock)
    assert not any(isinstance(m, GatedBlock) for m in model.modules())
    assert torch.equal(model(x), expected)


def test_survival_zero_in_eval_equals_the_pruned_network():
    # The paper's scaling rule makes "survival -> 0" and "removed" the same function.
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=3)
    names = [n for n, _ in gated_blocks(model)]
    gone = [names[1], names[3], names[6]]  # includes stage 2's downsampling block
    for name, b in gated_blocks(model):
        b.survival.fill_(0.0 if name in gone else 0.7)
    model.eval()
    pruned = remove_blocks(copy.deepcopy(model), gone).eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(model(x), pruned(x), atol=1e-5)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_survival_is_a_buffer_saved_in_the_state_dict(block):
    block.survival.fill_(0.4)
    state = block.state_dict()
    assert float(state["survival"]) == pytest.approx(0.4)
    assert "survival" not in dict(block.named_parameters())


def test_a_new_schedule_can_keep_the_function():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10).eval()
    for m in model.modules():  # BatchNorm biases that are not 0, so a scaled bias shows
        if isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.bias, 0, 0.1)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        set_survival(model, [1.0] * 9, keep_function=True)  # unchanged: nothing is touched
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        schedule = survival_schedule("linear", 9, 0.5)
        set_survival(model, schedule, keep_function=True)
        torch.testing.assert_close(model(x), before, atol=1e-5, rtol=0)
        last = gated_blocks(model)[-1][1]
        assert last.fold_keys() == ("branch.4.weight", "branch.4.bias")  # the branch's last BatchNorm
        torch.testing.assert_close(last.branch[4].bias, state["stages.2.2.branch.4.bias"] / 0.5)
        set_survival(model, [0.9] * 9)  # without keep_function: another function
        assert not torch.allclose(model(x), before, atol=1e-3)
    with pytest.raises(SdpruneError, match="survival 0 for stages.0.0 closes it"):
        set_survival(model, [0.0] + [0.9] * 8, keep_function=True)


@pytest.mark.parametrize("case", ["eval", "plain", "dropped", "kept", "mask", "scale"])
def test_block_traces_without_graph_breaks(case, down_block):
    """torch.compile (dynamo, fullgraph) traces every gate case: the block stays compilable."""
    torch._dynamo.reset()
    x = torch.randn(4, 8, 8, 8)
    gate = {"eval": None, "plain": None, "dropped": 0.0, "kept": 1.0,
            "mask": torch.tensor([1.0, 0.0, 1.0, 1.0]), "scale": down_block.survival}[case]
    down_block.train(case != "eval")
    compiled = torch.compile(down_block, backend="eager", fullgraph=True)
    with torch.no_grad(), gating([down_block], [gate]):
        expected = down_block(x)
        assert torch.allclose(compiled(x), expected)
