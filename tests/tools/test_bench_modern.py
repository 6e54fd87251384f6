"""tools/bench_modern.py (B7), dry-run at a tiny scale: the latency part on resnet20 at 16 px
with one or two timed rounds, the accuracy part on the embedded digits with resnet20 standing
in for the CIFAR ConvNeXt and ViT (1 epoch, one stochastic-depth arm; the plain twin's
command lines from --dry-run), then both resumed from their records without running
anything again. Timings taken here mean nothing; the files' structure and arithmetic do."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench(monkeypatch, subprocess_env):
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    monkeypatch.setenv("PYTHONPATH", subprocess_env["PYTHONPATH"])
    import bench_modern

    return bench_modern


def test_even_removal_keeps_a_block_in_every_stage(bench):
    from bench_common import evenly_removed

    from sdprune.depth.structure import block_layout
    from sdprune.nets.registry import create_model

    # ConvNeXt-T's stages (3, 3, 9, 3) through torchvision's own constructor, narrow
    model = create_model("tv_convnext_tiny", 10, block_setting=[[8, 16, 3], [16, 32, 3], [32, 64, 9], [64, None, 3]])
    # 5 of 3 + 3 + 9 + 3 blocks evenly spaced would be 0, 3, 7, 10, 14: none in the last stage
    removed = evenly_removed(model, 0.25, (3, 32, 32))
    rows = block_layout(model, (3, 32, 32))
    kept = [r for r in rows if r["name"] not in removed]
    assert len(kept) == 5 and {r["stage"] for r in kept} == {r["stage"] for r in rows}
    assert evenly_removed(model, 0.5, (3, 32, 32)) == [r["name"] for r in rows if r["position"] % 2]


def test_latency_part_records_ratios_per_keep(bench, tmp_path, capsys):
    out = tmp_path / "lat"
    args = ["latency", "--out", str(out), "--models", "resnet20", "--keeps", "0.5,1", "--image-size", "16",
            "--num-classes", "10", "--threads", "1", "--warmup", "0", "--repeats-b1", "2", "--repeats-b32", "1",
            "--samples", "2"]
    bench.main(args)
    record = json.loads((out / "results" / "resnet20.json").read_text())
    full, half = record["variants"]
    assert (full["keep"], half["keep"]) == (1.0, 0.5)  # the full model first, whatever the order asked
    assert full["kept"] == full["blocks"] == 9 and half["kept"] == 5 and half["params"] < full["params"]
    assert 0 < half["flops"] < full["flops"] and half["parity"] <= 1e-4
    assert min(full["logit_scale"], half["logit_scale"]) >= bench.MIN_LOGIT_SCALE  # parity is not vacuous
    assert all(Path(v["file"]).is_file() for v in record["variants"])
    for batch in ("1", "32"):
        lat = record["latency"]["1"][batch]
        assert lat[full["file"]]["ratio"] == 1.0
        assert all(math.isfinite(m["ratio"]) and m["ratio"] > 0 and m["p50_ms"] > 0 for m in lat.values())
    table = capsys.readouterr().out
    assert "| resnet20 | 0.5 | 5/9 |" in table and "latency ratio b32" in table
    bench.main(args)  # resumed: the model is not exported or timed again
    assert "done before" in capsys.readouterr().out


def test_zero_weights_are_filled_and_nothing_else(bench):
    """ViT's head and class token start at zero: a random-weight ViT's logits are all 0."""
    import torch

    from sdprune.nets.registry import create_model

    torch.manual_seed(0)
    model = create_model("vit_cifar", 10, 3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bench.fill_zero_weights(model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"class_token", "heads.head.weight"}
    assert not model.heads.head.bias.any() and 0.01 < float(model.heads.head.weight.detach().std()) < 0.03


def test_a_variant_whose_logits_say_nothing_is_refused(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "fill_zero_weights", lambda model: None)  # ViT's zero head stays
    out = tmp_path / "lat"
    with pytest.raises(SystemExit, match="vit_cifar keep 1.0: largest .logit. 0.0e.00 < 0.1: its parity check "
                                         "would be vacuous"):
        bench.main(["latency", "--out", str(out), "--models", "vit_cifar", "--keeps", "1", "--image-size", "32",
                    "--num-classes", "10", "--threads", "1", "--warmup", "0", "--repeats-b1", "1",
                    "--repeats-b32", "1", "--samples", "2"])
    assert not (out / "results" / "vit_cifar.json").exists()


@pytest.mark.long
def test_accuracy_part_trains_and_sweeps_an_arm(bench, tmp_path, capsys):
    out = tmp_path / "acc"
    args = ["accuracy", "--out", str(out), "--models", "resnet20", "--dataset", "digits", "--drop-rates", "0.5",
            "--epochs", "1", "--keeps", "1,0.5", "--criteria", "depth"]
    bench.main(args)
    arm = json.loads((out / "results" / "resnet20-d0.5-s0.json").read_text())
    assert "train --model resnet20 --dataset digits --survival linear --p-last 0.5 --drop-mode row" in arm["commands"][0]
    assert " sweep " in arm["commands"][1] and "--keep 1,0.5" in arm["commands"][1]
    assert arm["drop"] == 0.5 and arm["epochs"] == 1 and arm["blocks"] == 9 and 0 <= arm["test_acc"] <= 100
    assert arm["keeps"]["1.0"]["blocks"] == 9 and arm["keeps"]["0.5"]["blocks"] == 5
    assert all(0 <= p["test_acc"] <= 100 and p["criterion"] == "depth" for p in arm["keeps"].values())
    assert "| resnet20 | 0.5 | 1 |" in capsys.readouterr().out
    # an arm whose commands all ran is rebuilt from their records: no command runs again
    (out / "results" / "resnet20-d0.5-s0.json").unlink()
    bench.main(args)
    assert json.loads((out / "results" / "resnet20-d0.5-s0.json").read_text())["keeps"] == arm["keeps"]
    assert len(list((out / "logs").glob("*.log"))) == 2  # train and sweep, once each


def test_accuracy_arms_are_the_own_rate_and_the_plain_twin(bench, capsys):
    # convnext_cifar: torchvision's ConvNeXt rule up to drop rate 0.1, as ConvNeXt-T's (28M
    # parameters to build on the CPU for its rate) and vit_cifar's
    bench.main(["accuracy", "--out", "unused", "--models", "convnext_cifar", "--data-dir", "cifar10",
                "--dry-run"])
    plan = capsys.readouterr().out
    assert "convnext_cifar-d0.1-s0:" in plan and "convnext_cifar-d0-s0:" in plan
    assert "--survival linear --p-last 0.9 --drop-mode row" in plan  # p_L = 1 - its own drop rate
    assert "--survival none" in plan and "--dataset imagefolder --data-dir cifar10 --image-size 32" in plan
    assert plan.count(" sweep ") == 2 and "--keep 1,0.75,0.5,0.25" in plan
    assert "--allow-empty-stage" not in plan  # every stage keeps a block unless asked
    bench.main(["accuracy", "--out", "unused", "--models", "convnext_cifar", "--data-dir", "cifar10",
                "--allow-empty-stage", "--dry-run"])
    sweeps = [line for line in capsys.readouterr().out.splitlines() if " sweep " in line]
    assert len(sweeps) == 2 and all("--allow-empty-stage" in line for line in sweeps)
    with pytest.raises(SystemExit, match="without stochastic depth"):
        bench.own_drop_rate("resnet20")
