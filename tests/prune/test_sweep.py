"""`sdprune sweep`: outputs, exact keep=1.0, choices made on the validation slice only."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from sdprune.errors import SdpruneError
from sdprune.prune.heal import HealSpec
from sdprune.prune.pipeline import Budget, prune_checkpoint
from sdprune.prune.sweep import check_sweep, sweep_checkpoint


@pytest.fixture(scope="module")
def run_dir(trained_run):
    return trained_run


def test_sweep_writes_everything_and_keep_one_is_exact(run_dir, tmp_path):
    result = sweep_checkpoint(run_dir, keeps=(1.0, 0.5), criteria=("depth", "ablation"), onnx=True,
                              bench_repeats=3, out=tmp_path / "s1")
    out = tmp_path / "s1"
    for name in ("sweep.csv", "sweep.json", "sweep.md", "sweep.png"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert len(rows) == 4
    full = [p for p in result["points"] if p["keep"] == 1.0]
    # keep 1.0 is the reference itself, healed the same way: exactly, at no cost
    assert all(p["test_acc"] == result["unpruned"]["test_acc"] and p["change"] == 0.0 for p in full)
    assert all(p["params"] == result["unpruned"]["params"] for p in full)
    half = [p for p in result["points"] if p["keep"] == 0.5]
    assert all(p["blocks"] == 5 and p["params"] < result["unpruned"]["params"] for p in half)
    assert all(p["onnx_bytes"] < full[0]["onnx_bytes"] for p in half)
    assert all(p["latency_ratio"] > 0 for p in result["points"])
    assert json.loads((out / "sweep.json").read_text())["choice_split"] == "val"


def test_blocks_are_chosen_without_the_test_split(run_dir, monkeypatch, tmp_path):
    """Scramble the test labels: the kept blocks must not change (only the scores do)."""
    import sdprune.prune.sweep as sweep_mod

    clean = sweep_checkpoint(run_dir, keeps=(0.5,), criteria=("ablation", "influence"), onnx=False,
                             out=tmp_path / "s2")
    original = sweep_mod.data_for_checkpoint

    def scrambled(meta, *a, **k):
        bundle = original(meta, *a, **k)
        bundle.test.labels = (bundle.test.labels + 1) % len(bundle.classes)
        return bundle

    monkeypatch.setattr(sweep_mod, "data_for_checkpoint", scrambled)
    dirty = sweep_checkpoint(run_dir, keeps=(0.5,), criteria=("ablation", "influence"), onnx=False,
                             out=tmp_path / "s3")
    assert [p["kept"] for p in clean["points"]] == [p["kept"] for p in dirty["points"]]
    assert dirty["points"][0]["test_acc"] < clean["points"][0]["test_acc"]


@pytest.mark.parametrize("keeps, criteria, message", [
    ((), ("depth",), "at least one"),
    ((0.0,), ("depth",), "(0, 1]"),
    ((float("nan"),), ("depth",), "(0, 1]"),
    ((0.5,), ("magic",), "magic"),
])
def test_bad_sweeps_are_rejected(keeps, criteria, message):
    with pytest.raises(SdpruneError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        check_sweep(keeps, criteria)


def test_sweep_and_prune_run_the_same_pipeline(run_dir, tmp_path):
    """The sweep's point for (criterion, keep) is `sdprune prune`'s result for the same."""
    result = sweep_checkpoint(run_dir, keeps=(0.5,), criteria=("ablation", "depth"), onnx=False, out=tmp_path / "s")
    for point in result["points"]:
        s = prune_checkpoint(run_dir, Budget(keep=0.5), point["criterion"], out=tmp_path / point["criterion"])
        assert point["kept"] == s["kept"]
        assert point["val_acc"] == s["after"]["val"]["acc"] and point["test_acc"] == s["after"]["test"]["acc"]
        assert point["test_loss"] == s["after"]["test"]["loss"] and point["unhealed"] == s["unhealed"]
        assert point["bn"] == s["bn"] and point["heal"] == s["heal"] == "bn"
        assert point["params"] == s["params"]["after"] and point["flops"] == s["flops"]["after"]
        assert point["change"] == s["change"]["test"]
        assert result["unpruned"]["test_acc"] == s["reference"]["healed"]["test"]["acc"]
        assert result["unpruned"]["trained"]["test_acc"] == s["before"]["test"]["acc"]


def test_the_cost_is_measured_against_the_reference_healed_the_same_way(run_dir, tmp_path):
    result = sweep_checkpoint(run_dir, keeps=(1.0, 0.5), criteria=("depth",), onnx=False, out=tmp_path)
    u = result["unpruned"]
    assert u["recalibrated"] != u["trained"]  # BN re-estimation changes the unpruned network
    assert u["test_acc"] == u[u["kept"]]["test_acc"] and u["val_acc"] == u[u["kept"]]["val_acc"]
    for p in result["points"]:
        assert p["change"] == p["test_acc"] - u["test_acc"]
    report = (tmp_path / "sweep.md").read_text()
    assert f"{u['trained']['test_acc']:.2f}% as trained" in report
    assert f"{u['recalibrated']['test_acc']:.2f}% with BatchNorm statistics re-estimated" in report
    without = sweep_checkpoint(run_dir, keeps=(0.5,), criteria=("depth",), heal_spec=HealSpec.of("none"),
                               onnx=False, out=tmp_path / "none")
    assert without["unpruned"]["kept"] == "trained" and without["points"][0]["bn"] is None
    assert without["unpruned"]["recalibrated"] == u["recalibrated"]  # reported all the same


def test_sweep_points_keep_trained_statistics_where_re_estimation_hurts(run_dir, tmp_path, heal_on_zeros):
    import sdprune.prune.sweep as sweep_mod

    heal_on_zeros(sweep_mod)
    result = sweep_checkpoint(run_dir, keeps=(0.5,), criteria=("depth",), onnx=False, out=tmp_path)
    point = result["points"][0]
    assert point["bn"]["after"]["val"]["acc"] < point["bn"]["before"]["val"]["acc"]
    assert point["bn"]["kept"] == "trained" and point["test_acc"] == point["unhealed"]["test"]["acc"]


def test_cli_rejects_keep_above_an_already_pruned_model(run_dir, tmp_path):
    pruned = prune_checkpoint(run_dir, Budget(keep=0.5), "depth", out=tmp_path / "p")
    proc = subprocess.run([sys.executable, "-m", "sdprune", "sweep", str(pruned["checkpoint"]), "--keep", "0.75",
                           "--no-onnx", "--out", str(tmp_path / "s")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "already pruned" in proc.stderr
    assert not (tmp_path / "s").exists()


def test_without_matplotlib_everything_but_the_plot_is_written(run_dir, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result = sweep_checkpoint(run_dir, keeps=(1.0, 0.5), criteria=("depth",), onnx=False, out=tmp_path / "s4")
    out = tmp_path / "s4"
    assert "plot" not in result["files"] and not (out / "sweep.png").exists()
    for name in ("sweep.csv", "sweep.json", "sweep.md"):
        assert (out / name).stat().st_size > 0, name
