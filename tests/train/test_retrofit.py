"""Retrofit: adopting a trained sdprune network, distillation, and a prune that is free."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sdprune.data.bundle import data_for_checkpoint, load_data
from sdprune.depth.schedule import get_survival
from sdprune.depth.structure import block_names, remove_blocks
from sdprune.errors import SdpruneError
from sdprune.prune.retrofit import rank_for_retrofit
from sdprune.train.adopt import adopt
from sdprune.train.checkpoint import build_model, load_checkpoint
from sdprune.train.config import FINETUNE_DEFAULTS, TrainConfig, distill_weight, resolve_config
from sdprune.train.distill import distillation_loss
from sdprune.train.loop import train
from sdprune.train.trainer import build_training

FAST = dict(dataset="digits", batch_size=128, device="cpu")


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A plainly trained ResNet-20 on digits: the network the user already has."""
    out = tmp_path_factory.mktemp("plain") / "run"
    train(TrainConfig(model="resnet20", survival="none", epochs=3, out=str(out), **FAST))
    return out


def test_distillation_loss_is_cross_entropy_at_alpha_zero_and_zero_for_a_perfect_student():
    gen = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(8, 5, generator=gen), torch.randn(8, 5, generator=gen)
    labels = torch.randint(0, 5, (8,), generator=gen)
    assert torch.allclose(distillation_loss(logits, teacher, labels, 0.0), F.cross_entropy(logits, labels))
    assert float(distillation_loss(teacher, teacher, labels, 1.0)) == pytest.approx(0.0, abs=1e-6)
    kd = distillation_loss(logits, teacher, labels, 1.0, temperature=2.0, reduction="none")
    want = F.kl_div(F.log_softmax(logits / 2, 1), F.log_softmax(teacher / 2, 1), reduction="none",
                    log_target=True).sum(1) * 4
    assert kd.shape == (8,) and torch.allclose(kd, want, atol=1e-6)


def test_init_makes_the_defaults_a_fine_tune_and_flags_still_win():
    tuned = resolve_config(None, {"init": "x.pt"})
    assert (tuned.epochs, tuned.lr, tuned.lr_schedule, tuned.warmup_epochs) == tuple(
        FINETUNE_DEFAULTS[k] for k in ("epochs", "lr", "lr_schedule", "warmup_epochs"))
    assert tuned.model is None and distill_weight(tuned) == 0.5
    assert resolve_config(None, {"init": "x.pt", "lr": 0.05}).lr == 0.05
    assert distill_weight(resolve_config(None, {})) == 0.0
    with pytest.raises(SdpruneError, match="--distill needs --init"):
        TrainConfig(distill=0.5)
    assert TrainConfig().model == "resnet32" and TrainConfig(init="x.pt").model is None


def test_an_adopted_checkpoint_computes_what_it_computed(plain):
    ckpt = load_checkpoint(plain)
    original = build_model(ckpt)
    adopted = adopt(plain, None, 10, 1)
    x = torch.randn(4, 1, 8, 8)
    assert adopted.model_name == "resnet20" and adopted.source["new_head"] is False
    assert torch.equal(adopted.model(x), original(x))
    assert adopted.mean == ckpt["meta"]["data"]["mean"]


def test_other_classes_get_a_new_head_and_keep_the_backbone(plain):
    adopted = adopt(plain, None, 4, 1)
    old = build_model(load_checkpoint(plain)).state_dict()
    new = adopted.model.state_dict()
    assert adopted.source["new_head"] and new["head.2.weight"].shape == (4, 64)
    assert all(torch.equal(new[k], v) for k, v in old.items() if not k.startswith("head."))


@pytest.mark.parametrize("model, classes, channels, message", [
    ("resnet32", 10, 1, "is a resnet20, not --model resnet32"),
    (None, 10, 3, "takes 1-channel images"),
])
def test_a_mismatched_init_is_refused_in_one_line(plain, model, classes, channels, message):
    with pytest.raises(SdpruneError, match=message) as err:
        adopt(plain, model, classes, channels)
    assert "\n" not in str(err.value)


def test_a_file_that_is_not_weights_is_refused(tmp_path):
    bad = tmp_path / "w.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(SdpruneError, match="not a weights file"):
        adopt(bad, None, 10, 1)
    with pytest.raises(SdpruneError, match="^--init .*missing.pt not found$"):
        adopt(tmp_path / "missing.pt", None, 10, 1)
    with pytest.raises(SdpruneError, match="^--init .*checkpoint.pt is a folder, not a file$"):
        (tmp_path / "run" / "checkpoint.pt").mkdir(parents=True)
        adopt(tmp_path / "run", None, 10, 1)


def test_distillation_is_used_when_on_and_absent_when_off(plain):
    data = load_data("digits")
    adopted = adopt(plain, None, 10, 1)
    on = build_training(TrainConfig(init=str(plain), model="resnet20", **FAST), data, torch.device("cpu"),
                        adopted=adopted)
    off = build_training(TrainConfig(init=str(plain), model="resnet20", distill=0.0, **FAST), data,
                         torch.device("cpu"), adopted=adopt(plain, None, 10, 1))
    assert off.teacher is None and off.distill == 0.0
    assert on.teacher is not None and on.distill == 0.5 and not on.teacher.training
    calls = []
    on.teacher.register_forward_hook(lambda *a: calls.append(1))
    images, labels = data.train.images[:32], data.train.labels[:32]
    on.step(0, images, labels)
    assert calls == [1]
    assert all(p.grad is None for p in on.teacher.parameters())  # frozen: the student learns, not it


@pytest.mark.parametrize("survival", ["none", "linear"])
def test_a_retrofit_starts_from_the_adopted_function_whatever_its_schedule(plain, survival):
    adopted = adopt(plain, None, 10, 1)
    trainer = build_training(TrainConfig(init=str(plain), model="resnet20", survival=survival, **FAST),
                             load_data("digits"), torch.device("cpu"), adopted=adopted)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(trainer.model.eval()(x), adopted.model(x), atol=1e-5, rtol=0)
    expected = [1.0] * 9 if survival == "none" else [1 - i / 18 for i in range(1, 10)]
    assert get_survival(trainer.model) == pytest.approx(expected)  # the schedule, folded into the branches
    assert get_survival(adopted.model) == [1.0] * 9  # the teacher is left as it was


def test_a_prune_aware_retrofit_excludes_the_chosen_blocks_and_its_prune_is_free(plain, tmp_path):
    data = data_for_checkpoint(load_checkpoint(plain)["meta"])
    ranking = rank_for_retrofit(adopt(plain, None, 10, 1).model, data, torch.device("cpu"), 0.5)
    out = tmp_path / "retro"
    cfg = resolve_config(None, dict(init=str(plain), survival="learned", target_keep=0.5, epochs=2, out=str(out),
                                    **FAST))  # the fine-tune defaults, as `sdprune train --init` gets them
    summary = train(cfg, rank_blocks=lambda *a: ranking)
    ckpt = load_checkpoint(summary["checkpoint"])
    model = build_model(ckpt)
    survival = get_survival(model)
    names = block_names(model)
    excluded = [n for n, r in zip(names, ranking) if r < 1.0]
    assert len(excluded) == len(names) - 5  # keep 0.5 of 9 blocks
    assert [n for n, p in zip(names, survival) if p == 0.0] == excluded
    assert all(p == 1.0 for n, p in zip(names, survival) if n not in excluded)  # plain init: kept stay on
    assert ckpt["meta"]["init"]["kind"] == "sdprune" and ckpt["meta"]["config"]["lr"] == 0.01
    x = data.test.images[:16].float().div(255).sub(data.mean[0]).div(data.std[0])
    pruned = remove_blocks(build_model(ckpt), excluded)
    assert torch.allclose(pruned(x), model(x), atol=1e-6)


@pytest.mark.parametrize("criterion", ["ablation", "influence", "norm"])
def test_a_named_criterion_excludes_exactly_what_prune_removes(plain, tmp_path, criterion):
    """`train --criterion C` and `prune --criterion C` decide alike: same statistic, same images."""
    from sdprune.depth.select import Budget
    from sdprune.prune.pipeline import prune_checkpoint

    data = data_for_checkpoint(load_checkpoint(plain)["meta"])
    model = adopt(plain, None, 10, 1).model
    ranking = rank_for_retrofit(model, data, torch.device("cpu"), 0.5, criterion)
    excluded = {n for n, r in zip(block_names(model), ranking) if r < 1.0}
    pruned = prune_checkpoint(plain, Budget(0.5), criterion=criterion, out=tmp_path / "p")
    assert len(excluded) == 4 and excluded == set(pruned["removed"])


def test_train_ranks_by_its_criterion_on_prune_s_images_and_anneals_by_its_anneal_end(plain, tmp_path,
                                                                                     monkeypatch):
    import sdprune.prune.retrofit as retrofit
    from sdprune.choices import STATS_IMAGES
    from sdprune.depth.select import Budget
    from sdprune.prune.pipeline import prune_checkpoint

    scored, score_blocks = [], retrofit.score_blocks
    monkeypatch.setattr(retrofit, "score_blocks",
                        lambda *a, **k: scored.append((tuple(a[2]), k.get("max_images"))) or score_blocks(*a, **k))
    cfg = resolve_config(None, dict(init=str(plain), survival="learned", target_keep=0.5, epochs=2, criterion="norm",
                                    anneal_end=0.3, out=str(tmp_path / "retro"), **FAST))
    summary = train(cfg, rank_blocks=rank_for_retrofit)  # as `sdprune train` passes it
    assert scored == [(("norm",), STATS_IMAGES)]  # prune's statistic, on prune's default image count
    model = build_model(load_checkpoint(summary["checkpoint"]))
    gone = {n for n, p in zip(block_names(model), get_survival(model)) if p == 0.0}
    assert gone == set(prune_checkpoint(plain, Budget(0.5), criterion="norm", out=tmp_path / "p")["removed"])
    adopted = adopt(plain, None, 10, 1)
    trainer = build_training(cfg, data_for_checkpoint(load_checkpoint(plain)["meta"]), torch.device("cpu"),
                             adopted=adopted, ranking=[1.0] * 5 + [0.0] * 4)
    assert trainer.controller.anneal_end == 0.3


def test_a_retrofit_resumes_exactly_without_ranking_again(plain, tmp_path, interrupt_after):
    ranks = []

    def rank(model, data, device, keep, criterion):
        ranks.append(keep)
        return [1.0, 1.2, 0.1, 1.1, 0.2, 0.3, 1.3, 0.4, 1.4]

    cfg = dict(init=str(plain), survival="learned", target_keep=0.5, epochs=2, **FAST)
    whole = train(TrainConfig(out=str(tmp_path / "whole"), **cfg), rank_blocks=rank)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out=str(tmp_path / "cut"), **cfg), interrupt_after(1), rank_blocks=rank)
    resumed = train(TrainConfig(device="cpu"), resume=tmp_path / "cut", rank_blocks=rank)
    assert ranks == [0.5, 0.5]  # the resumed run kept its step-0 ranking
    a, b = load_checkpoint(whole["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


@pytest.mark.long
def test_torchvision_weights_are_adopted_exactly_and_retrofitted_end_to_end(tmp_path):
    from torchvision.models import resnet18

    from sdprune.depth.select import Budget
    from sdprune.prune.pipeline import prune_model, score_blocks

    torch.manual_seed(0)
    original = resnet18(num_classes=10)
    for m in original.modules():  # trained-looking BatchNorm statistics, so a wrong mapping shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    original.eval()
    weights = tmp_path / "resnet18.pth"
    torch.save(original.state_dict(), weights)
    adopted = adopt(weights, None, 10, 3)
    x = torch.randn(2, 3, 32, 32)
    assert adopted.model_name == "tv_resnet18" and adopted.source["kind"] == "torchvision"
    assert torch.allclose(adopted.model(x), original(x), atol=1e-5)
    assert adopted.mean == [0.485, 0.456, 0.406]  # what ImageNet weights expect
    cfg = resolve_config(None, dict(init=str(weights), dataset="synthetic", image_size=32, epochs=1, batch_size=64,
                                    survival="learned", target_keep=0.5, device="cpu", out=str(tmp_path / "run")))
    ranking = [1.0, 0.1, 1.0, 0.2, 1.0, 0.3, 1.0, 0.4]
    summary = train(cfg, rank_blocks=lambda model, data, device, keep, criterion: ranking)
    ckpt = load_checkpoint(summary["checkpoint"])
    assert ckpt["meta"]["model"]["name"] == "tv_resnet18" and ckpt["meta"]["data"]["mean"] == adopted.mean
    model, data = build_model(ckpt), data_for_checkpoint(ckpt["meta"])
    assert [p for p in get_survival(model)] == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    pruned = prune_model(model, score_blocks(model, data, ["survival"]), data, "survival", Budget(0.5))
    assert len(pruned.kept) == 4 and pruned.after["test"]["acc"] == pytest.approx(
        ckpt["meta"]["metrics"]["test_acc"], abs=1.0)  # the prune is free (up to BN re-estimation)


def test_a_pruned_checkpoint_is_retrofitted_with_keep_a_fraction_of_the_architecture(plain, tmp_path):
    from sdprune.depth.select import Budget
    from sdprune.prune.pipeline import prune_checkpoint

    pruned = prune_checkpoint(plain, Budget(keep_blocks=7), criterion="depth", out=tmp_path / "p")
    cfg = resolve_config(None, dict(init=pruned["checkpoint"], survival="learned", target_keep=0.5, epochs=1,
                                    out=str(tmp_path / "retro"), **FAST))
    summary = train(cfg, rank_blocks=lambda m, d, dev, k, c: rank_for_retrofit(m, d, dev, k, c))
    ckpt = load_checkpoint(summary["checkpoint"])  # readable: blocks listed as the architecture has them
    model = build_model(ckpt)
    assert ckpt["meta"]["removed"] == pruned["removed"] and len(ckpt["meta"]["blocks"]) == 9
    assert sum(p > 0 for p in get_survival(model)) == 5  # keep 0.5 of the architecture's 9, as prune counts


def test_a_retrofit_refuses_nan_weights_and_a_changed_teacher_in_one_line(plain, tmp_path, interrupt_after):
    import shutil

    ckpt = load_checkpoint(plain)
    bad = dict(ckpt)
    bad["state_dict"] = {k: v.clone() for k, v in ckpt["state_dict"].items()}
    bad["state_dict"]["head.2.weight"][0, 0] = float("nan")
    torch.save({k: v for k, v in bad.items() if k != "path"}, tmp_path / "nan.pt")
    with pytest.raises(SdpruneError, match="NaN or infinite"):
        adopt(tmp_path / "nan.pt", None, 10, 1)
    teacher = tmp_path / "teacher.pt"
    shutil.copy(plain / "checkpoint.pt", teacher)
    cfg = dict(init=str(teacher), epochs=2, survival="none", **FAST)
    with pytest.raises(KeyboardInterrupt):
        train(resolve_config(None, {**cfg, "out": str(tmp_path / "cut")}), interrupt_after(1))
    torch.save({k: v for k, v in bad.items() if k != "path" and k != "state_dict"}
               | {"state_dict": ckpt["state_dict"], "extra": 1}, teacher)  # another file, same weights
    with pytest.raises(SdpruneError, match="not the file this run started from"):
        train(TrainConfig(device="cpu"), resume=tmp_path / "cut" / "checkpoint.pt")
