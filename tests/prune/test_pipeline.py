"""Pruning a checkpoint: a really smaller network, exact at keep 1.0, round-trips, heals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sdprune.data.bundle import data_for_checkpoint
from sdprune.depth.block import GatedBlock
from sdprune.depth.structure import gated_blocks
from sdprune.errors import SdpruneError
from sdprune.prune.pipeline import default_criterion, prune_checkpoint
from sdprune.train.checkpoint import build_model, load_checkpoint
from sdprune.train.config import TrainConfig
from sdprune.train.evaluate import evaluate, evaluate_checkpoint, predict
from sdprune.train.loop import train


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prune") / "run"
    train(TrainConfig(model="resnet20", epochs=2, out=str(out)))
    return out


@pytest.fixture(scope="module")
def original(run):
    ckpt = load_checkpoint(run)
    return build_model(ckpt), data_for_checkpoint(ckpt["meta"])


def pruned_dirs(run: Path) -> list[Path]:
    return sorted(p for p in run.iterdir() if p.name.startswith("pruned"))


def test_keep_one_reproduces_the_unpruned_outputs_exactly(run, original, tmp_path):
    s = prune_checkpoint(run, keep=1.0, out=tmp_path / "k1", device="cpu")
    assert s["removed"] == [] and s["blocks"]["after"] == 9
    model, data = original
    again = build_model(load_checkpoint(s["checkpoint"]))
    assert torch.equal(predict(again, data.test, data.mean, data.std),
                       predict(model, data.test, data.mean, data.std))
    assert s["after"] == s["before"]


def test_half_the_blocks_go_for_real_and_the_checkpoint_round_trips(run, original):
    s = prune_checkpoint(run, keep=0.5, device="cpu")
    out = Path(s["checkpoint"]).parent
    assert out == run / "pruned-keep0.50" and (out / "summary.json").is_file()
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
    # healing helped, and the summary on disk is the one returned
    assert s["after"]["val"]["loss"] < s["unhealed"]["val"]["loss"]
    saved = json.loads((out / "summary.json").read_text())
    assert saved["removed"] == s["removed"] and saved["after"] == s["after"]


def test_re_pruning_a_pruned_checkpoint_accumulates_removals(run, tmp_path):
    first = prune_checkpoint(run, keep_blocks=7, criterion="depth", heal="none", out=tmp_path / "a", device="cpu")
    second = prune_checkpoint(first["checkpoint"], keep=4 / 9, criterion="influence", out=tmp_path / "b",
                              device="cpu")
    meta = load_checkpoint(second["checkpoint"])["meta"]
    assert second["blocks"] == {"total": 9, "before": 7, "after": 4}
    assert meta["removed"] == first["removed"] + second["removed"]
    assert len(gated_blocks(build_model(load_checkpoint(second["checkpoint"])))) == 4


def test_iterative_budget_and_finetune(run, tmp_path):
    s = prune_checkpoint(run, keep_blocks=7, criterion="ablation", iterative=True, out=tmp_path / "it",
                         device="cpu", stats_images=64)
    assert len(s["removed"]) == 2 and s["unhealed"] is None
    budget = 150_000
    s = prune_checkpoint(run, max_params=budget, criterion="norm", finetune_epochs=0.2,
                         out=tmp_path / "ft", device="cpu")
    assert s["params"]["after"] <= budget < s["params"]["before"]
    assert s["finetune"]["steps"] > 0 and s["distill"]


@pytest.mark.parametrize("kwargs,message", [
    (dict(keep=0.0), "--keep"), (dict(keep=1.2), "--keep"), (dict(keep=float("nan")), "--keep"),
    (dict(keep_blocks=0), "leaves no block"), (dict(max_params=1000), "--max-params"),
    (dict(keep_blocks=2), "must stay"), (dict(keep=0.5, criterion="largest"), "unknown criterion"),
    (dict(keep=0.5, heal="full"), "--heal"), (dict(), "how much"),
])
def test_bad_input_writes_nothing(run, kwargs, message):
    before = pruned_dirs(run)
    with pytest.raises(SdpruneError, match=message):
        prune_checkpoint(run, device="cpu", **{"criterion": "depth", **kwargs})
    assert pruned_dirs(run) == before


def test_a_file_that_is_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(3)}, bogus)
    with pytest.raises(SdpruneError, match="not an sdprune checkpoint"):
        prune_checkpoint(bogus, keep=0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


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
