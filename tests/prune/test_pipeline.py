"""Pruning a checkpoint: a really smaller network, exact at keep 1.0, round-trips, heals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sdprune.depth.block import GatedBlock
from sdprune.depth.select import Budget
from sdprune.depth.structure import gated_blocks
from sdprune.errors import SdpruneError
from sdprune.prune.heal import HealSpec
from sdprune.prune.pipeline import default_criterion, prune_checkpoint
from sdprune.train.checkpoint import build_model, load_checkpoint
from sdprune.train.evaluate import evaluate, evaluate_checkpoint, predict


@pytest.fixture(scope="module")
def original(trained):
    return trained


def test_keep_one_reproduces_the_unpruned_outputs_exactly(run, original, tmp_path):
    s = prune_checkpoint(run, Budget(keep=1.0), heal_spec=HealSpec.of("none"), out=tmp_path / "k1", device="cpu")
    assert s["removed"] == [] and s["blocks"]["after"] == 9
    model, data = original
    again = build_model(load_checkpoint(s["checkpoint"]))
    assert torch.equal(predict(again, data.test, data.mean, data.std),
                       predict(model, data.test, data.mean, data.std))
    assert s["after"] == s["unpruned"] and s["change"] == {"val": 0.0, "test": 0.0}


def test_keep_one_with_healing_is_the_healed_reference(run, tmp_path):
    """Nothing removed is the reference itself: the same healing, so a cost of exactly 0."""
    s = prune_checkpoint(run, Budget(keep=1.0), out=tmp_path / "k1bn", device="cpu")
    assert s["removed"] == [] and s["after"] == s["reference"]["healed"]
    assert s["bn"]["statistics"] == s["reference"]["statistics"] and s["change"] == {"val": 0.0, "test": 0.0}


def test_half_the_blocks_go_for_real_and_the_checkpoint_round_trips(run, original):
    s = prune_checkpoint(run, Budget(keep=0.5), device="cpu")
    out = Path(s["checkpoint"]).parent
    assert out == run / "pruned-keep0.50-ablation" and (out / "summary.json").is_file()
    assert len(s["kept"]) == 5 and len(s["removed"]) == 4 and s["criterion"] == "ablation"
    assert s["params"]["after"] < s["params"]["before"] and s["flops"]["after"] < s["flops"]["before"]
    ckpt = load_checkpoint(out)
    meta = ckpt["meta"]
    assert meta["kind"] == "pruned" and meta["removed"] == s["removed"] and meta["kept"] == s["kept"]
    assert meta["parent"] == str(run / "checkpoint.pt") and len(meta["survival"]) == 5
    model = build_model(ckpt)
    names = [n for n, _ in gated_blocks(model)]
    assert names == s["kept"]
    modules = dict(model.named_modules())
    assert all(not isinstance(modules.get(n), GatedBlock) for n in s["removed"])
    assert not any(k.startswith(tuple(f"{n}.branch" for n in s["removed"])) for k in ckpt["state_dict"])
    assert sum(p.numel() for p in model.parameters()) == s["params"]["after"]
    _, data = original
    assert evaluate(model, data.val, data.mean, data.std) == pytest.approx(s["after"]["val"])
    # healing helped (and was kept for it), and the summary on disk is the one returned
    assert s["bn"]["statistics"] == "recalibrated" and s["after"] == s["bn"]["after"]
    assert s["after"]["val"]["loss"] < s["unhealed"]["val"]["loss"]
    saved = json.loads((out / "summary.json").read_text())
    assert saved["removed"] == s["removed"] and saved["after"] == s["after"]


def test_bn_statistics_that_hurt_validation_are_not_kept(run, tmp_path, heal_on_zeros):
    from sdprune.prune import pipeline

    heal_on_zeros(pipeline)
    s = prune_checkpoint(run, Budget(keep=0.5), "depth", out=tmp_path / "p", device="cpu")
    bn = s["bn"]
    assert bn["after"]["val"]["acc"] < bn["before"]["val"]["acc"]  # re-estimated on zeros only: worse on val
    assert bn["statistics"] == "trained"
    assert s["after"] == s["unhealed"] == bn["before"]  # the trained statistics are back, exactly
    saved = evaluate_checkpoint(s["checkpoint"], device="cpu")
    assert saved["test"]["acc"] == pytest.approx(s["unhealed"]["test"]["acc"])  # and they are what was saved
    ref = s["reference"]  # the same rule for the unpruned network
    assert ref["recalibrated"]["val"]["acc"] < ref["trained"]["val"]["acc"] and ref["statistics"] == "trained"


def test_re_pruning_a_pruned_checkpoint_accumulates_removals(run, tmp_path):
    first = prune_checkpoint(run, Budget(keep_blocks=7), "depth", HealSpec.of("none"), out=tmp_path / "a",
                             device="cpu")
    second = prune_checkpoint(first["checkpoint"], Budget(keep=4 / 9), "influence", out=tmp_path / "b", device="cpu")
    meta = load_checkpoint(second["checkpoint"])["meta"]
    assert second["blocks"] == {"total": 9, "before": 7, "after": 4}
    assert meta["removed"] == first["removed"] + second["removed"]
    assert len(gated_blocks(build_model(load_checkpoint(second["checkpoint"])))) == 4


def test_iterative_pruning_rescores_after_every_removal(run, tmp_path, monkeypatch):
    from sdprune.depth.select import removed_blocks, select_blocks
    from sdprune.prune import pipeline

    scored = []
    real = pipeline.score_blocks

    def spy(*args, **kwargs):
        scored.append(real(*args, **kwargs))
        return scored[-1]

    monkeypatch.setattr(pipeline, "score_blocks", spy)
    s = prune_checkpoint(run, Budget(keep_blocks=6), "ablation", iterative=True, out=tmp_path / "it",
                         device="cpu", stats_images=64)
    assert len(s["removed"]) == 3 and s["iterative"]
    assert [len(rows) for rows in scored] == [9, 8, 7, 6]  # the network, then what each removal left
    for rows, victim in zip(scored, s["removed"]):  # each block went by the scores of the network it left
        assert removed_blocks(rows, select_blocks(rows, "ablation", keep_blocks=len(rows) - 1)) == [victim]
    assert s["unhealed"] == s["bn"]["before"]  # the final network is healed from its trained statistics


def test_a_parameter_budget_with_a_distilled_finetune(run, tmp_path):
    budget = 150_000
    s = prune_checkpoint(run, Budget(max_params=budget), "norm", HealSpec.of("bn", finetune_epochs=0.2),
                         out=tmp_path / "ft", device="cpu")
    assert s["params"]["after"] <= budget < s["params"]["before"]
    assert s["finetune"]["steps"] > 0 and s["distill"] and s["heal"] == "finetune"
    assert s["unhealed"] != s["bn"]["before"]  # the fine-tune ran between the two
    # where the time went: every phase measured, the fine-tune's own share apart from what precedes it
    t = s["timing"]
    assert t["finetune_s"] == s["finetune"]["wall_s"] > 0
    phases = ("load_s", "score_s", "choose_s", "cut_s", "finetune_s", "heal_s", "reference_s")
    assert all(t[k] > 0 for k in phases)
    assert sum(t[k] for k in phases) <= s["wall_s"]  # the phases do not overlap
    # what precedes the fine-tune's first step; the unpruned reference is measured after it
    assert t["before_finetune_s"] == pytest.approx(t["load_s"] + t["score_s"] + t["choose_s"] + t["cut_s"])


def test_the_time_before_a_finetune_leaves_out_the_reference(run, tmp_path, monkeypatch):
    import sdprune.prune.pipeline as pipeline

    order = []
    measure, tune = pipeline.reference, pipeline.heal

    def reference(*args, **kwargs):
        order.append("reference")
        return measure(*args, **kwargs)

    def heal(*args, **kwargs):
        order.append("heal")
        return tune(*args, **kwargs)

    monkeypatch.setattr(pipeline, "reference", reference)
    monkeypatch.setattr(pipeline, "heal", heal)
    prune_checkpoint(run, Budget(keep_blocks=5), "depth", HealSpec.of("finetune", finetune_epochs=0.1),
                     out=tmp_path / "ft", device="cpu")
    # the pruned network's heal, then the reference's (cut_and_heal with nothing removed)
    assert order == ["heal", "reference", "heal"]
    assert "before_finetune_s" not in prune_checkpoint(run, Budget(keep_blocks=5), "depth", out=tmp_path / "bn",
                                                       device="cpu")["timing"]  # no fine-tune, no such phase


def test_the_one_shot_choice_is_made_once_and_timed(run, tmp_path, monkeypatch):
    import time

    import sdprune.prune.pipeline as pipeline

    calls, choose = [], pipeline.choose_blocks

    def slow_choice(*args, **kwargs):
        calls.append(1)
        time.sleep(0.3)
        return choose(*args, **kwargs)

    monkeypatch.setattr(pipeline, "choose_blocks", slow_choice)
    s = prune_checkpoint(run, Budget(keep_blocks=5), "norm", HealSpec.of("none"), out=tmp_path / "p", device="cpu")
    assert len(calls) == 1 and len(s["kept"]) == 5  # it measures the network's size: not twice
    assert s["timing"]["choose_s"] >= 0.3


def test_a_keep_above_what_a_pruned_checkpoint_holds_is_refused_before_scoring(run, tmp_path, monkeypatch):
    from sdprune.prune import pipeline

    first = prune_checkpoint(run, Budget(keep_blocks=7), "depth", HealSpec.of("none"), out=tmp_path / "a",
                             device="cpu")

    def never(*args, **kwargs):
        raise AssertionError("scored a network for a budget it cannot meet")

    monkeypatch.setattr(pipeline, "score_blocks", never)
    for budget in (Budget(keep=0.9), Budget(keep_blocks=8), Budget(keep=1.0)):
        with pytest.raises(SdpruneError, match="already pruned to 7 of 9 blocks: cannot keep"):
            prune_checkpoint(first["checkpoint"], budget, "depth", out=tmp_path / "b", device="cpu")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("kwargs,message", [({"batch_size": 0}, "batch size"),
                                            ({"stats_images": 0}, "at least 1 image")])
def test_statistics_settings_are_checked_before_loading(tmp_path, kwargs, message):
    from sdprune.prune.stats import score_checkpoint

    missing = tmp_path / "nothing" / "checkpoint.pt"  # loading it would fail with "not found"
    with pytest.raises(SdpruneError, match=message):
        prune_checkpoint(missing, Budget(keep=0.5), **kwargs)
    with pytest.raises(SdpruneError, match=message):
        score_checkpoint(missing, batch_size=kwargs.get("batch_size", 128), max_images=kwargs.get("stats_images"))


def test_rerunning_the_same_prune_is_allowed_even_when_nothing_is_removed(run):
    """Keep 1.0 fine-tunes nothing (it is the reference), yet it is the same prune when run again."""
    for _ in range(2):
        s = prune_checkpoint(run, Budget(keep=1.0), "depth", HealSpec.of("finetune", 0.1), device="cpu")
    assert s["heal"] == "finetune" and s["finetune"] is None and s["change"] == {"val": 0.0, "test": 0.0}
    assert Path(s["checkpoint"]).parent.name == "pruned-keep1.00-depth-finetune"


@pytest.mark.parametrize("make,message", [
    (lambda: Budget(keep=0.0), "--keep"), (lambda: Budget(keep=1.2), "--keep"),
    (lambda: Budget(keep=float("nan")), "--keep"), (lambda: Budget(keep_blocks=0), "leaves no block"),
    (lambda: Budget(max_params=-1), "--max-params"), (lambda: Budget(), "how much"),
    (lambda: HealSpec.of("full"), "--heal"), (lambda: HealSpec.of("bn", float("nan")), "--finetune-epochs"),
    (lambda: HealSpec.of("none", 1.0), "--heal none"), (lambda: HealSpec.of("finetune", 0), "--heal finetune"),
    (lambda: HealSpec(finetune_epochs=-1.0), "--finetune-epochs"), (lambda: HealSpec(bn_batches=0), "1 batch"),
])
def test_bad_budgets_and_heals_are_refused_before_any_work(make, message):
    with pytest.raises(SdpruneError, match=message):
        make()


def test_heal_modes_are_one_list():
    assert HealSpec.of("none") == HealSpec(bn=False)
    assert HealSpec.of("bn") == HealSpec() and HealSpec().mode == "bn"
    assert HealSpec.of("finetune") == HealSpec(finetune_epochs=1.0) and HealSpec.of("finetune").mode == "finetune"
    assert HealSpec.of("bn", 2) == HealSpec.of("finetune", 2)  # `prune --finetune-epochs 2` fine-tunes
    assert HealSpec.of("finetune", distill=False).distill is False


def test_default_criterion_follows_learned_survival():
    assert default_criterion({"config": {"survival": "learned"}}) == "survival"
    assert default_criterion({"config": {"survival": "linear"}}) == "ablation"


def test_evaluate_checkpoint(run, original):
    result = evaluate_checkpoint(run, device="cpu")
    model, data = original
    assert result["test"] == pytest.approx(evaluate(model, data.test, data.mean, data.std))
    assert result["blocks"] == {"kept": 9, "total": 9} and result["params"] > 0 and result["flops"] > 0
    with pytest.raises(SdpruneError, match="shape"):
        evaluate_checkpoint(run, dataset="synthetic", device="cpu")
