"""Learned survival: budget, bounds, importance from natural experiments, prune-aware, resume."""

from __future__ import annotations

import io

import pytest
import torch

from sdprune.choices import RETROFIT_ANNEAL_END
from sdprune.depth.gates import GateSampler
from sdprune.depth.learned import LearnedSurvival, budget_mean, fit_budget, select_kept, shift_to_budget
from sdprune.depth.schedule import get_survival
from sdprune.depth.select import target_count
from sdprune.depth.structure import block_layout, gated_blocks
from sdprune.errors import SdpruneError
from sdprune.nets.registry import create_model


def test_fit_budget_meets_weighted_target_and_bounds():
    scores = torch.tensor([3.0, -1.0, 0.5, -4.0, 2.0])
    weights = torch.tensor([1.0, 2.0, 1.0, 1.0, 3.0])
    for target in (0.3, 0.5, 0.77, 0.95):
        p = fit_budget(scores, target, weights, p_min=0.05)
        assert budget_mean(p, weights) == pytest.approx(target, abs=1e-4)
        assert float(p.min()) >= 0.05 and float(p.max()) <= 1.0
        assert torch.equal(torch.argsort(p), torch.argsort(scores))  # order follows importance


def test_shift_to_budget_keeps_order_and_meets_target():
    p0 = torch.linspace(1.0, 0.5, 10)
    p = shift_to_budget(p0, 0.6, torch.ones(10), 0.05)
    assert float(p.mean()) == pytest.approx(0.6, abs=1e-4)
    assert bool((p[:-1] >= p[1:]).all())


def test_select_kept_agrees_with_prune_and_keeps_every_stage():
    layout = block_layout(create_model("resnet20", 10, 1), (1, 8, 8))  # 3 stages x 3 blocks
    importance = torch.tensor([5.0, 4.0, 3.0, 2.5, 2.0, 0.1, 0.3, 0.2, 0.1])
    assert select_kept(importance, layout, 3) == [0, 3, 6]  # the best of each stage
    assert select_kept(importance, layout, 5) == [0, 1, 2, 3, 6]


AWARE_EFFECTS = torch.tensor([0.4, 0.01, 0.2, 0.0, 0.3, 0.02, 0.1, 0.0, 0.25])  # blocks 1, 3, 5, 7 useless


def _drive(controller: LearnedSurvival, sampler: GateSampler, effects: torch.Tensor, steps: int,
           span: range, noise: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Steps ``span`` of a ``steps``-step run with a synthetic loss: base - sum(effects * gates) + noise.

    Returns (controller.current, the blocks' survival buffers) after every step.
    """
    blocks = sampler.blocks
    seen = []
    for step in span:
        gates = sampler.draw(step, 8)
        loss = 2.0 - float((effects * gates).sum()) + 0.05 * float(torch.randn(1, generator=noise))
        changed = controller.observe(step, gates, loss, steps)
        if changed is not None:
            sampler.refresh(changed)
        seen.append((controller.current.clone(), torch.stack([b.survival.clone() for b in blocks])))
    return seen


def _simulate(controller: LearnedSurvival, model, effects: torch.Tensor, steps: int, seed: int = 0,
              trace: list | None = None):
    """A whole synthetic run; ``trace`` collects (progress, survival) after every step."""
    seen = _drive(controller, GateSampler(model, "batch", seed), effects, steps, range(steps),
                  torch.Generator().manual_seed(seed + 1))
    if trace is not None:
        trace += [((step + 1) / steps, current) for step, (current, _) in enumerate(seen)]


def test_controller_resumes_exactly_through_a_checkpoint():
    """Checkpointed mid-run (torch.save / weights_only load), every later step matches bit for bit."""
    steps, cut = 3000, 1000
    model = create_model("resnet20", 10, 1)
    full = _drive(LearnedSurvival(model, (1, 8, 8)), GateSampler(model, "batch", 0), AWARE_EFFECTS, steps,
                  range(steps), torch.Generator().manual_seed(1))

    model = create_model("resnet20", 10, 1)
    controller, noise = LearnedSurvival(model, (1, 8, 8)), torch.Generator().manual_seed(1)
    _drive(controller, GateSampler(model, "batch", 0), AWARE_EFFECTS, steps, range(cut), noise)
    buffer = io.BytesIO()
    torch.save({"controller": controller.state_dict(), "model": model.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed = create_model("resnet20", 10, 1)
    resumed.load_state_dict(saved["model"])
    controller = LearnedSurvival(resumed, (1, 8, 8))
    controller.load_state_dict(saved["controller"])
    sampler = GateSampler(resumed, "batch", 0)  # reads the survivals back, as the trainer does
    rest = _drive(controller, sampler, AWARE_EFFECTS, steps, range(cut, steps), noise)
    for step, ((current, survival), (current2, survival2)) in enumerate(zip(full[cut:], rest), cut):
        assert torch.equal(current, current2), step
        assert torch.equal(survival, survival2), step
    assert not torch.equal(full[cut][0], full[-1][0])  # the survivals did move after the cut


def test_state_dict_is_a_copy():
    model = create_model("resnet20", 10, 1)
    controller = LearnedSurvival(model, (1, 8, 8))
    state = controller.state_dict()
    frozen = {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    _simulate(controller, model, AWARE_EFFECTS, 400)
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    assert not torch.equal(controller.xtx, state["xtx"])


def test_a_target_keep_below_one_block_per_stage_fails_at_build_time():
    model = create_model("resnet20", 10, 1)  # 3 stages x 3 blocks
    with pytest.raises(SdpruneError, match=r"^--target-keep 0.2 keeps 2 blocks; this network needs at least 3 "
                                           r"\(one per stage\)$"):
        LearnedSurvival(model, (1, 8, 8), target_keep=0.2)
    assert LearnedSurvival(model, (1, 8, 8), target_keep=1 / 3).n_keep == 3  # one per stage: fine


def test_a_p_min_above_the_default_budget_is_rejected():
    model = create_model("resnet20", 10, 1)
    with pytest.raises(SdpruneError, match="--p-min 0.9 is above the survival budget"):
        LearnedSurvival(model, (1, 8, 8), p_min=0.9)  # linear's mean is about 0.75


def test_estimator_ranks_blocks_by_their_effect_and_holds_budget():
    model = create_model("resnet20", 10, 1)
    controller = LearnedSurvival(model, (1, 8, 8))
    effects = torch.tensor([0.4, 0.0, 0.2, 0.0, 0.3, 0.0, 0.1, 0.0, 0.25])
    _simulate(controller, model, effects, 1500)
    p = torch.tensor(get_survival(model))
    useless, useful = p[effects == 0], p[effects > 0]
    assert float(useless.max()) < float(useful.min())
    assert budget_mean(p, controller.weights) == pytest.approx(controller.target, abs=0.03)
    assert float(p.min()) >= controller.p_min - 1e-6 and float(p.max()) <= 1.0
    assert torch.corrcoef(torch.stack([controller.importance.float(), effects]))[0, 1] > 0.95


def test_prune_aware_drives_excluded_blocks_to_zero():
    model = create_model("resnet20", 10, 1)
    controller = LearnedSurvival(model, (1, 8, 8), target_keep=0.5)
    effects = torch.tensor([0.4, 0.01, 0.2, 0.0, 0.3, 0.02, 0.1, 0.0, 0.25])
    _simulate(controller, model, effects, 1500)
    p = torch.tensor(get_survival(model))
    n_keep = target_count(9, 0.5, None)
    assert int((p == 0).sum()) == 9 - n_keep
    assert set(torch.nonzero(p == 0).flatten().tolist()) == {1, 3, 5, 7}




@pytest.mark.parametrize("anneal_end", [None, 0.2, 1.0])
def test_a_retrofit_excludes_its_ranked_blocks_by_anneal_end(anneal_end):
    """The excluded blocks (lowest ranked) fall from their trained survival to exactly 0 by
    ``anneal_end`` of training (default RETROFIT_ANNEAL_END), and not before it; at 1, on the
    last update (training never reaches progress 1), so the prune is still free."""
    model = create_model("resnet20", 10, 1)
    ranking = [1.0, 0.1, 1.2, 0.2, 1.1, 0.3, 1.3, 0.4, 1.4]
    controller = LearnedSurvival(model, (1, 8, 8), target_keep=0.5, start=[1.0] * 9, ranking=ranking,
                                 anneal_end=anneal_end)
    trace: list = []
    _simulate(controller, model, AWARE_EFFECTS, 1000, trace=trace)
    end = RETROFIT_ANNEAL_END if anneal_end is None else anneal_end
    excluded = [1, 3, 5, 7]
    gone = [progress for progress, p in trace if all(float(p[i]) == 0.0 for i in excluded)]
    assert gone and end - 0.01 <= gone[0] <= end + 0.01  # gone within one update of anneal_end
    assert all(float(trace[-1][1][i]) == 1.0 for i in range(9) if i not in excluded)  # kept blocks held


@pytest.mark.parametrize("anneal_end", [0.0, -0.1, 1.5, float("nan")])
def test_an_anneal_end_outside_the_run_is_refused(anneal_end):
    with pytest.raises(ValueError, match="anneal_end must be in"):
        LearnedSurvival(create_model("resnet20", 10, 1), (1, 8, 8), target_keep=0.5, start=[1.0] * 9,
                        ranking=[1.0] * 9, anneal_end=anneal_end)


def test_prune_aware_budget_holds_over_the_whole_network():
    """The kept blocks carry the compute the excluded ones stop executing, during and after annealing."""
    model = create_model("resnet20", 10, 1)
    controller = LearnedSurvival(model, (1, 8, 8), target_keep=0.5, target_survival=0.4)
    w = controller.weights
    controller.importance = AWARE_EFFECTS.double()
    for progress in (0.15, 0.3, 0.45, 0.59, 0.6, 0.8, 1.0):  # the targets themselves
        p = controller.update_targets(progress)
        assert budget_mean(p, w) == pytest.approx(0.4, abs=1e-4), progress
        assert float(p.max()) <= 1.0
    assert controller.update_targets(0.3)[controller.excluded].min() > 0  # still annealing
    assert controller.update_targets(0.6)[controller.excluded].max() == 0  # annealed

    model = create_model("resnet20", 10, 1)
    controller = LearnedSurvival(model, (1, 8, 8), target_keep=0.5, target_survival=0.4)
    trace: list = []
    _simulate(controller, model, AWARE_EFFECTS, 1500, trace=trace)
    executed = {round(progress, 3): budget_mean(p, w) for progress, p in trace}
    for progress in (0.2, 0.3, 0.4, 0.5, 0.59, 0.7, 0.8, 0.9, 1.0):  # the survivals the gates are drawn from
        assert executed[progress] == pytest.approx(0.4, abs=0.02), progress
    p = torch.tensor(get_survival(model), dtype=torch.float64)
    assert set(torch.nonzero(p == 0).flatten().tolist()) == {1, 3, 5, 7}
    assert budget_mean(p, w) == pytest.approx(0.4, abs=0.005)
    summary = controller.summary()
    assert summary["executed_fraction"] == pytest.approx(0.4, abs=0.005) and summary["budget_feasible"]


def test_prune_aware_budget_out_of_reach_is_capped_and_reported():
    """Keep a quarter, budget 0.75: even the kept blocks always on execute less; say how much."""
    model = create_model("resnet20", 10, 1)
    controller = LearnedSurvival(model, (1, 8, 8), target_keep=0.25, target_survival=0.75)
    _simulate(controller, model, AWARE_EFFECTS, 1500)
    p = torch.tensor(get_survival(model))
    kept = p > 0
    assert int(kept.sum()) == target_count(9, 0.25, None)
    assert p[kept].tolist() == pytest.approx([1.0] * int(kept.sum()), abs=1e-4)  # capped: always on
    reachable = float(controller.weights[kept].sum() / controller.weights.sum())
    assert reachable < 0.75
    summary = controller.summary()
    assert summary["target_survival"] == 0.75 and not summary["budget_feasible"]
    assert summary["executed_fraction"] == pytest.approx(reachable, abs=1e-4)
    state = controller.state_dict()  # the checkpoint's copy
    assert state["executed_fraction"] == pytest.approx(reachable, abs=1e-4) and not state["budget_feasible"]


def _ranks(x: torch.Tensor) -> torch.Tensor:
    return torch.argsort(torch.argsort(x)).double()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([_ranks(a), _ranks(b)]))[0, 1])


def test_row_mode_ranks_blocks_from_per_sample_experiments():
    """Row mode: each sample has its own mask, so each sample is an experiment.

    Synthetic per-sample losses from known block effects, plus per-sample noise (as a
    cross-entropy has) and a per-step shift (the network changing between steps). The
    per-sample regression recovers the ranking; regressing the batch-mean loss on the
    batch-mean mask (which barely varies) does not.
    """
    effects = torch.tensor([0.32, 0.0, 0.16, 0.04, 0.28, 0.08, 0.12, 0.24, 0.20])
    steps, batch = 400, 128
    model, twin = create_model("resnet20", 10, 1), create_model("resnet20", 10, 1)
    per_sample, batch_mean = LearnedSurvival(model, (1, 8, 8)), LearnedSurvival(twin, (1, 8, 8))
    sampler = GateSampler(model, "row", 0)
    noise = torch.Generator().manual_seed(1)
    for step in range(steps):
        gates = sampler.draw(step, batch)  # (L, N)
        shift = 0.1 * float(torch.randn(1, generator=noise)) - 0.5 * step / steps
        losses = 2.0 + shift - effects @ gates + 0.5 * torch.randn(batch, generator=noise)
        changed = per_sample.observe(step, gates, losses, steps)
        batch_mean.observe(step, gates.mean(dim=1), float(losses.mean()), steps)  # the old way
        if changed is not None:
            sampler.refresh(changed)
    assert spearman(per_sample.importance.float(), effects) > 0.9
    assert torch.corrcoef(torch.stack([per_sample.importance.float(), effects]))[0, 1] > 0.95
    assert spearman(batch_mean.importance.float(), effects) < 0.5
    p = torch.tensor(get_survival(model))
    assert spearman(p, effects) > 0.9  # the survivals follow the ranking
    assert budget_mean(p, per_sample.weights) == pytest.approx(per_sample.target, abs=0.03)


def test_row_mode_gates_need_per_sample_losses():
    model = create_model("resnet20", 10, 1)
    controller = LearnedSurvival(model, (1, 8, 8))
    with pytest.raises(ValueError, match="per-sample"):
        controller.observe(0, torch.ones(9, 4), 1.0, 10)
    with pytest.raises(ValueError, match="per-sample"):
        controller.observe(0, torch.ones(9, 4), torch.ones(3), 10)


@pytest.mark.long
def test_a_useless_block_learns_low_survival_in_real_training():
    """Zero and freeze one block's branch: real training must rank it below useful blocks."""
    from sdprune.data.augment import augment
    from sdprune.data.bundle import load_data
    from sdprune.data.images import iterate_batches, normalize

    torch.manual_seed(0)
    data = load_data("digits")
    model = create_model("resnet20", 10, 1)
    dead_name, dead = gated_blocks(model)[1]
    last_bn = dead.branch[-1]
    torch.nn.init.zeros_(last_bn.weight), torch.nn.init.zeros_(last_bn.bias)
    for prm in dead.branch.parameters():
        prm.requires_grad_(False)
    controller = LearnedSurvival(model, data.input_shape)
    sampler = GateSampler(model, "batch", 0)
    opt = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=0.05, momentum=0.9)
    steps, step, g = 400, 0, torch.Generator().manual_seed(0)
    model.train()
    while step < steps:
        for images, labels in iterate_batches(data.train, 64, g, drop_last=True):
            if step == steps:
                break
            x = normalize(augment(images, data.augment, g), data.mean, data.std)
            with sampler.install(step, len(labels)) as gates:
                loss = torch.nn.functional.cross_entropy(model(x), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            changed = controller.observe(step, gates, float(loss.detach()), steps)
            if changed is not None:
                sampler.refresh(changed)
            step += 1
    p = get_survival(model)
    names = [n for n, _ in gated_blocks(model)]
    i = names.index(dead_name)
    assert p[i] < sorted(p)[len(p) // 2], f"dead block {dead_name} kept survival {p[i]:.2f}: {p}"
    assert p[i] < 0.5
