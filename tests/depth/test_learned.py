"""Learned survival: budget, bounds, importance from natural experiments, prune-aware, resume."""

from __future__ import annotations

import pytest
import torch

from sdprune.depth.gates import GateSampler
from sdprune.depth.learned import LearnedSurvival, budget_mean, fit_budget, select_kept, shift_to_budget
from sdprune.depth.schedule import get_survival
from sdprune.depth.select import target_count
from sdprune.depth.structure import block_layout, gated_blocks
from sdprune.errors import SdpruneError
from sdprune.nets.registry import create_model
from sdprune.train.config import TrainConfig


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


def _simulate(controller: LearnedSurvival, model, effects: torch.Tensor, steps: int, seed: int = 0):
    """Drive the controller with a synthetic loss: base - sum(effects * gates) + noise."""
    sampler = GateSampler(model, "batch", seed)
    noise = torch.Generator().manual_seed(seed + 1)
    for step in range(steps):
        gates = sampler.draw(step, 8)
        loss = 2.0 - float((effects * gates).sum()) + 0.05 * float(torch.randn(1, generator=noise))
        changed = controller.observe(step, gates, loss, step / steps, steps)
        if changed is not None:
            sampler.refresh(changed)


def test_estimator_ranks_blocks_by_their_effect_and_holds_budget():
    model = create_model("resnet20", 10, 1)
    cfg = TrainConfig(survival="learned")
    controller = LearnedSurvival(model, cfg, (1, 8, 8))
    effects = torch.tensor([0.4, 0.0, 0.2, 0.0, 0.3, 0.0, 0.1, 0.0, 0.25])
    _simulate(controller, model, effects, 1500)
    p = torch.tensor(get_survival(model))
    useless, useful = p[effects == 0], p[effects > 0]
    assert float(useless.max()) < float(useful.min())
    assert budget_mean(p, controller.weights) == pytest.approx(controller.target, abs=0.03)
    assert float(p.min()) >= cfg.p_min - 1e-6 and float(p.max()) <= 1.0
    assert torch.corrcoef(torch.stack([controller.importance.float(), effects]))[0, 1] > 0.95


def test_prune_aware_drives_excluded_blocks_to_zero():
    model = create_model("resnet20", 10, 1)
    controller = LearnedSurvival(model, TrainConfig(survival="learned", target_keep=0.5), (1, 8, 8))
    effects = torch.tensor([0.4, 0.01, 0.2, 0.0, 0.3, 0.02, 0.1, 0.0, 0.25])
    _simulate(controller, model, effects, 1500)
    p = torch.tensor(get_survival(model))
    n_keep = target_count(9, 0.5, None)
    assert int((p == 0).sum()) == 9 - n_keep
    assert set(torch.nonzero(p == 0).flatten().tolist()) == {1, 3, 5, 7}


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
    controller = LearnedSurvival(model, TrainConfig(survival="learned"), data.input_shape)
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
            changed = controller.observe(step, gates, float(loss.detach()), step / steps, steps)
            if changed is not None:
                sampler.refresh(changed)
            step += 1
    p = get_survival(model)
    names = [n for n, _ in gated_blocks(model)]
    i = names.index(dead_name)
    assert p[i] < sorted(p)[len(p) // 2], f"dead block {dead_name} kept survival {p[i]:.2f}: {p}"
    assert p[i] < 0.5


def test_learned_flags_are_validated():
    with pytest.raises(SdpruneError, match="--target-keep"):
        TrainConfig(survival="linear", target_keep=0.5)
    with pytest.raises(SdpruneError, match="--target-survival"):
        TrainConfig(survival="learned", target_survival=0.0)
    with pytest.raises(SdpruneError, match="--target-keep"):
        TrainConfig(survival="learned", target_keep=float("nan"))


def test_learned_training_resumes_exactly(tmp_path, monkeypatch):
    """Interrupt a learned run after epoch 1, resume it: same survival, importance, weights."""
    import sdprune.train.loop as trainer
    from sdprune.train.checkpoint import load_checkpoint

    config = dict(model="resnet20", survival="learned", target_keep=0.5, epochs=2, batch_size=128)
    trainer.train(TrainConfig(**config, out=str(tmp_path / "full")))

    write_metrics = trainer._write_metrics

    def crash_after_first_epoch(path, rows):
        write_metrics(path, rows)
        raise KeyboardInterrupt  # as if the machine went away after epoch 1's checkpoint

    monkeypatch.setattr(trainer, "_write_metrics", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(TrainConfig(**config, out=str(tmp_path / "cut")))
    monkeypatch.setattr(trainer, "_write_metrics", write_metrics)
    assert load_checkpoint(tmp_path / "cut")["meta"]["epoch"] == 1
    trainer.train(TrainConfig(), resume=tmp_path / "cut")

    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "cut")
    assert a["meta"]["survival"] == b["meta"]["survival"]
    assert torch.equal(a["controller"]["importance"], b["controller"]["importance"])
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
