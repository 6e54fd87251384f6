"""Block statistics: drop-one with a shared prefix equals real removal; the other scores."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from sdprune.data.bundle import load_data
from sdprune.depth.schedule import set_survival, survival_schedule
from sdprune.depth.structure import block_layout, gated_blocks, remove_blocks
from sdprune.nets.measure import count_flops
from sdprune.nets.registry import create_model
from sdprune.prune.stats import ablation_flop_ratio, collect_stats, score_checkpoint
from sdprune.train.checkpoint import save_checkpoint
from sdprune.train.config import TrainConfig
from sdprune.train.evaluate import evaluate
from sdprune.train.trainer import checkpoint_meta


@pytest.fixture(scope="module")
def data():
    return load_data("digits")


@pytest.fixture(scope="module")
def model(data):
    """An untrained resnet20 with linear survival and non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    net = create_model("resnet20", num_classes=10, in_channels=1)
    set_survival(net, survival_schedule("linear", 9))
    net.train()
    with torch.no_grad():  # realistic running statistics, so removal shifts activations
        for _ in range(3):
            net((data.train.images[:256].float() / 255 - 0.3) / 0.3)
    return net.eval()


def test_layout_of_a_cifar_resnet(model):
    rows = block_layout(model, (1, 8, 8))
    assert [r["stage"] for r in rows] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [r["index"] for r in rows] == [0, 1, 2] * 3
    assert [r["name"] for r in rows if r["transition"]] == ["stages.1.0", "stages.2.0"]
    blocks = dict(gated_blocks(model))
    assert all(r["params"] == sum(p.numel() for p in blocks[r["name"]].branch.parameters()) for r in rows)
    # removing a block saves exactly its branch FLOPs (the pad shortcut costs none)
    pruned = remove_blocks(copy.deepcopy(model), ["stages.1.1", "stages.2.0"])
    saved = rows[4]["flops"] + rows[6]["flops"]
    assert count_flops(model, (1, 8, 8)) - count_flops(pruned, (1, 8, 8)) == saved > 0
    assert 1.0 < ablation_flop_ratio(rows) < 1 + len(rows)


def test_drop_one_equals_real_removal(model, data):
    rows = collect_stats(model, data, "cpu", batch_size=50)  # several batches, one partial
    full = evaluate(model, data.val, data.mean, data.std)
    for row in rows:
        cut = remove_blocks(copy.deepcopy(model), [row["name"]])
        without = evaluate(cut, data.val, data.mean, data.std)
        assert row["delta_loss"] == pytest.approx(without["loss"] - full["loss"], abs=1e-5)
        assert row["delta_acc"] == pytest.approx(without["acc"] - full["acc"], abs=1e-6)
    assert any(abs(r["delta_loss"]) > 1e-3 for r in rows)
    assert [r["survival"] for r in rows] == pytest.approx(survival_schedule("linear", 9))
    # the model is left exactly as it was: no forward override, same outputs
    assert all("forward" not in vars(b) for _, b in gated_blocks(model))
    assert evaluate(model, data.val, data.mean, data.std) == full


def test_a_block_that_adds_nothing_scores_zero(model, data):
    net = copy.deepcopy(model)
    block = dict(gated_blocks(net))["stages.1.1"]
    last_bn = block.branch[-1]
    with torch.no_grad():
        last_bn.weight.zero_()
        last_bn.bias.zero_()
    rows = {r["name"]: r for r in collect_stats(net, data, "cpu", max_images=64)}
    assert rows["stages.1.1"]["residual_ratio"] == 0.0
    assert rows["stages.1.1"]["influence"] == pytest.approx(0.0, abs=1e-6)
    assert rows["stages.1.1"]["delta_loss"] == pytest.approx(0.0, abs=1e-6)
    others = [r for n, r in rows.items() if n != "stages.1.1"]
    assert all(r["residual_ratio"] > 0.01 and r["influence"] > 1e-4 for r in others)


def test_without_ablation_and_with_fewer_images(model, data):
    rows = collect_stats(model, data, "cpu", max_images=32, ablation=False)
    assert all(r["delta_loss"] is None and r["delta_acc"] is None for r in rows)
    assert all(r["influence"] > 0 for r in rows)


def test_score_checkpoint_writes_stats_next_to_it(model, data, tmp_path):
    config = TrainConfig(model="resnet20", epochs=1)
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(path, model, checkpoint_meta(config, data, model, epoch=0, step=0, metrics={}))
    doc = score_checkpoint(path, device="cpu", max_images=64)
    saved = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert saved["split"] == "val" and saved["images"] == 64 and len(saved["blocks"]) == 9
    assert saved["cost"]["ratio"] > 0 and saved["cost"]["flop_ratio"] > 1
    assert doc["full"] == saved["full"]
    assert {"name", "stage", "index", "survival", "delta_loss", "delta_acc", "influence",
            "residual_ratio", "params", "flops"} <= set(saved["blocks"][0])
    # Another checkpoint of the same folder gets its own file: the first one's stays.
    other = tmp_path / "run" / "best.pt"
    other.write_bytes(path.read_bytes())
    second = score_checkpoint(other, device="cpu", max_images=32, ablation=False)
    assert second["written"] == str(tmp_path / "run" / "stats-best.json")
    assert json.loads((tmp_path / "run" / "stats.json").read_text()) == saved
    assert json.loads((tmp_path / "run" / "stats-best.json").read_text())["images"] == 32


def test_stats_on_fewer_images_sample_every_class(model, data):
    """--stats-images on a class-sorted set (as an image folder is) must not see only the first classes."""
    data = dataclasses.replace(data, val=data.val.subset(data.val.labels.argsort(stable=True)))
    # ^ sorted by class, as ImageFolder reads a folder
    seen = []
    hook = model.stem.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        capped = data.val.sample(40)
        assert len(set(capped.labels.tolist())) >= 5  # the first 40 sorted images hold 1-2 classes
        assert torch.equal(capped.labels, data.val.sample(40).labels)  # seeded: the same every time
        collect_stats(model, data, ablation=False, max_images=40)
    finally:
        hook.remove()
    assert sum(seen[1:]) == 40  # after block_layout's one-image probe: exactly the 40 sampled
    baseline = evaluate(model, capped, data.mean, data.std)
    rows = collect_stats(model, data, max_images=40)
    removed = copy.deepcopy(model)
    remove_blocks(removed, [rows[0]["name"]])
    assert rows[0]["delta_loss"] == pytest.approx(evaluate(removed, capped, data.mean, data.std)["loss"]
                                                  - baseline["loss"], abs=1e-5)
