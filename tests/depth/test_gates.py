"""Survival schedules and gate sampling: statistics, determinism, the paper's numbers."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import binomtest
from torch import nn

from sdprune.depth.block import GatedBlock
from sdprune.depth.gates import GateSampler, expected_gates, gating, sample_gates, step_seed
from sdprune.depth.schedule import get_survival, set_survival, survival_schedule
from sdprune.errors import SdpruneError

ALPHA = 1e-3
SEEDS = (0, 1, 2024)


def chain(survival: list[float]) -> nn.Module:
    """A stack of trivial gated blocks carrying the given survival probabilities."""
    model = nn.Sequential(*[GatedBlock(nn.Identity()) for _ in survival])
    set_survival(model, survival)
    return model.train()


def draw(sampler: GateSampler, steps: range, batch_size: int = 1) -> torch.Tensor:
    return torch.stack([sampler.draw(s, batch_size) for s in steps])


@pytest.mark.parametrize("seed", SEEDS)
def test_batch_gate_frequencies_match_survival(seed):
    survival = [0.95, 0.8, 0.65, 0.5, 0.3, 0.1]
    gates = draw(GateSampler(chain(survival), "batch", seed), range(3000))
    assert gates.shape == (3000, len(survival))
    assert set(gates.unique().tolist()) <= {0.0, 1.0}
    for l, p in enumerate(survival):
        k = int(gates[:, l].sum())
        assert binomtest(k, len(gates), p).pvalue > ALPHA, (l, p, k)


@pytest.mark.parametrize("seed", SEEDS)
def test_batch_gates_independent_across_blocks_and_steps(seed):
    gates = draw(GateSampler(chain([0.5] * 4), "batch", seed), range(3000))
    n = len(gates)
    # Two blocks of one step both open with probability 1/4 if drawn independently.
    both = int((gates[:, 0] * gates[:, 3]).sum())
    assert binomtest(both, n, 0.25).pvalue > ALPHA
    # Neighbouring steps (seeds step_seed(s) and step_seed(s + 1)) agree half the time.
    agree = int((gates[1:, 1] == gates[:-1, 1]).sum())
    assert binomtest(agree, n - 1, 0.5).pvalue > ALPHA


@pytest.mark.parametrize("seed", SEEDS)
def test_row_gate_frequencies_match_survival(seed):
    survival = [0.9, 0.5, 0.2]
    sampler = GateSampler(chain(survival), "row", seed)
    gates = draw(sampler, range(100), batch_size=32)  # (steps, blocks, rows)
    assert gates.shape == (100, 3, 32)
    for l, p in enumerate(survival):
        k = int(gates[:, l].sum())
        assert binomtest(k, gates[:, l].numel(), p).pvalue > ALPHA, (l, p, k)
    # Per-sample: rows of one step differ (a batch-wide draw would make them all equal).
    assert bool((gates[:, 1].min(dim=1).values != gates[:, 1].max(dim=1).values).any())


def test_row_mode_installs_a_mask_per_block():
    model = chain([0.5, 0.5])
    with GateSampler(model, "row", seed=3).install(step=0, batch_size=8) as gates:
        for i, block in enumerate(model):
            assert isinstance(block.gate, torch.Tensor) and block.gate.shape == (8,)
            assert torch.equal(block.gate, gates[i])
    assert all(b.gate is None for b in model)


def test_same_seed_and_step_give_same_gates():
    survival = [0.9, 0.7, 0.5, 0.3, 0.5, 0.5, 0.5, 0.5]
    a = GateSampler(chain(survival), "batch", seed=7)
    b = GateSampler(chain(survival), "batch", seed=7)
    # Order of calls must not matter: each step re-seeds from (seed, step).
    forward = draw(a, range(50))
    backward = draw(b, range(49, -1, -1)).flip(0)
    assert torch.equal(forward, backward)
    assert torch.equal(a.draw(13, 1), forward[13])
    # ... and different steps or seeds give different gates.
    assert len({tuple(g.tolist()) for g in forward}) > 10
    other_seed = draw(GateSampler(chain(survival), "batch", seed=8), range(50))
    assert not torch.equal(forward, other_seed)


def test_gates_live_on_the_blocks_only_inside_the_scope():
    model = chain([0.5] * 6)
    sampler = GateSampler(model, "batch", seed=1)
    with sampler.install(step=5, batch_size=4) as gates:
        assert [b.gate for b in model] == gates.tolist()
        assert all(isinstance(b.gate, float) for b in model)
    assert all(b.gate is None for b in model)
    assert torch.equal(gates, sampler.draw(5, 4))  # installing draws exactly what draw() gives
    with pytest.raises(RuntimeError, match="boom"), sampler.install(step=6, batch_size=4):
        raise RuntimeError("boom")
    assert all(b.gate is None and b.replay is None for b in model)  # removed on error too


def test_plain_schedule_draws_nothing_and_runs_every_branch():
    model = chain(survival_schedule("none", 5))
    with GateSampler(model, "batch", seed=0).install(step=3, batch_size=4) as gates:
        assert all(b.gate is None for b in model)
    assert gates.tolist() == [1.0] * 5


def test_gating_checks_one_gate_per_block():
    model = chain([0.5] * 3)
    with pytest.raises(ValueError, match="2 gates for 3 blocks"), gating(list(model), [0.0, 1.0]):
        pass
    assert all(b.gate is None for b in model)


def test_gating_scopes_nest_and_restore_what_was_installed():
    model = chain([0.5, 0.25])
    cached = torch.ones(1)
    with gating(list(model), [0.0, 1.0], replay=[None, cached]):
        with expected_gates(model):  # healing's scope inside a step's: the survivals, then back
            assert [b.gate for b in model] == [b.survival for b in model]
            assert all(b.replay is None for b in model)
        assert [b.gate for b in model] == [0.0, 1.0] and model[1].replay is cached
        with pytest.raises(RuntimeError, match="boom"), gating(list(model), [1.0, 1.0]):
            raise RuntimeError("boom")
        assert [b.gate for b in model] == [0.0, 1.0]  # restored on error too
    assert all(b.gate is None and b.replay is None for b in model)


def test_gating_takes_python_numbers_as_float_gates():
    model = chain([0.5, 0.5])
    x = torch.randn(3, 4)
    with gating(list(model), [0, 1]):
        assert [type(b.gate) for b in model] == [float, float]
        assert torch.equal(model(x), 2 * x)  # block 0 skipped (x), block 1 adds its identity branch (2x)
    with gating(list(model), [True, 0]):
        assert [b.gate for b in model] == [1.0, 0.0]


def test_row_masks_go_to_the_blocks_device():
    """No device argument: the masks follow the blocks (a CUDA model gets CUDA masks)."""
    model = chain([0.5, 0.5])
    sampler = GateSampler(model, "row", seed=0)
    model.to("meta")  # a device other than the CPU the gates are drawn on
    with sampler.install(step=0, batch_size=4) as gates:
        assert gates.device.type == "cpu"  # what the caller counts with stays on the host
        assert all(b.gate.device.type == "meta" and b.gate.shape == (4,) for b in model)


def test_step_seed_is_deterministic_and_spread():
    assert step_seed(0, 0) == step_seed(0, 0)
    seeds = {step_seed(s, t) for s in range(4) for t in range(256)}
    assert len(seeds) == 4 * 256
    assert all(0 <= v < 2 ** 63 for v in seeds)


def test_sample_gates_rejects_unknown_mode():
    with pytest.raises(SdpruneError, match="drop mode"):
        sample_gates(torch.full((3,), 0.5), "layer", torch.Generator())
    with pytest.raises(SdpruneError, match="drop mode"):
        GateSampler(chain([0.5]), "column")


def test_linear_schedule_is_the_papers_rule():
    assert survival_schedule("linear", 4, 0.5) == pytest.approx([0.875, 0.75, 0.625, 0.5])
    assert survival_schedule("linear", 3, 0.2) == pytest.approx([1 - 0.8 / 3, 1 - 1.6 / 3, 0.2])
    assert survival_schedule("linear", 5, 1.0) == [1.0] * 5


@pytest.mark.parametrize("blocks", [9, 18, 54, 75, 600])
def test_linear_half_executes_3L_minus_1_over_4_blocks(blocks):
    # Huang et al. 2016: with p_L = 0.5 the expected number of active blocks is (3L - 1) / 4.
    survival = survival_schedule("linear", blocks, 0.5)
    assert sum(survival) == pytest.approx((3 * blocks - 1) / 4)
    assert survival[-1] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(survival, survival[1:]))


def test_uniform_and_none_schedules():
    assert survival_schedule("uniform", 3, 0.8) == [0.8] * 3
    assert survival_schedule("none", 4, 0.3) == [1.0] * 4


def test_learned_schedule_starts_from_linear():
    assert survival_schedule("learned", 6, 0.5) == survival_schedule("linear", 6, 0.5)


@pytest.mark.parametrize("p_last", [0.0, -0.1, 1.5, float("nan")])
def test_schedule_rejects_p_last_outside_0_1(p_last):
    with pytest.raises(SdpruneError, match="p-last"):
        survival_schedule("linear", 4, p_last)


def test_schedule_rejects_unknown_name():
    with pytest.raises(SdpruneError, match="unknown survival schedule"):
        survival_schedule("exponential", 4)


def test_survival_round_trips_through_the_blocks():
    model = chain([1.0] * 3)
    set_survival(model, [0.25, 0.5, 0.75])
    assert get_survival(model) == [0.25, 0.5, 0.75]
    with pytest.raises(ValueError):
        set_survival(model, [0.5, 0.5])
