"""`sdprune sweep`: outputs, exact keep=1.0, choices made on the validation slice only."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from sdprune.errors import SdpruneError
from sdprune.prune.sweep import check_sweep, sweep_checkpoint
from sdprune.train.config import TrainConfig
from sdprune.train.loop import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "run"
    train(TrainConfig(model="resnet20", epochs=3, out=str(out)))
    return out


def test_sweep_writes_everything_and_keep_one_is_exact(run_dir):
    result = sweep_checkpoint(run_dir, keeps=(1.0, 0.5), criteria=("depth", "ablation"), onnx=True,
                              bench_repeats=3, out=run_dir / "s1")
    out = run_dir / "s1"
    for name in ("sweep.csv", "sweep.json", "sweep.md", "sweep.png"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert len(rows) == 4
    full = [p for p in result["points"] if p["keep"] == 1.0]
    assert all(p["test_acc"] == result["unpruned"]["test_acc"] for p in full)  # exactly
    assert all(p["params"] == result["unpruned"]["params"] for p in full)
    half = [p for p in result["points"] if p["keep"] == 0.5]
    assert all(p["blocks"] == 5 and p["params"] < result["unpruned"]["params"] for p in half)
    assert all(p["onnx_bytes"] < full[0]["onnx_bytes"] for p in half)
    assert all(p["latency_ratio"] > 0 for p in result["points"])
    assert json.loads((out / "sweep.json").read_text())["choice_split"] == "val"


def test_blocks_are_chosen_without_the_test_split(run_dir, monkeypatch):
    """Scramble the test labels: the kept blocks must not change (only the scores do)."""
    import sdprune.prune.sweep as sweep_mod

    clean = sweep_checkpoint(run_dir, keeps=(0.5,), criteria=("ablation", "influence"), onnx=False,
                             out=run_dir / "s2")
    original = sweep_mod.data_for_checkpoint

    def scrambled(meta, *a, **k):
        bundle = original(meta, *a, **k)
        bundle.test.labels = (bundle.test.labels + 1) % len(bundle.classes)
        return bundle

    monkeypatch.setattr(sweep_mod, "data_for_checkpoint", scrambled)
    dirty = sweep_checkpoint(run_dir, keeps=(0.5,), criteria=("ablation", "influence"), onnx=False,
                             out=run_dir / "s3")
    assert [p["kept"] for p in clean["points"]] == [p["kept"] for p in dirty["points"]]
    assert dirty["points"][0]["test_acc"] < clean["points"][0]["test_acc"]


@pytest.mark.parametrize("keeps, criteria, heal, message", [
    ((), ("depth",), "bn", "at least one"),
    ((0.0,), ("depth",), "bn", "(0, 1]"),
    ((float("nan"),), ("depth",), "bn", "(0, 1]"),
    ((0.5,), ("magic",), "bn", "magic"),
    ((0.5,), ("depth",), "maybe", "--heal"),
])
def test_bad_sweeps_are_rejected(keeps, criteria, heal, message):
    with pytest.raises(SdpruneError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        check_sweep(keeps, criteria, heal)


def test_cli_rejects_keep_above_an_already_pruned_model(run_dir, tmp_path):
    from sdprune.prune.pipeline import prune_checkpoint

    pruned = prune_checkpoint(run_dir, keep=0.5, criterion="depth", out=tmp_path / "p")
    proc = subprocess.run([sys.executable, "-m", "sdprune", "sweep", str(pruned["checkpoint"]), "--keep", "0.75",
                           "--no-onnx", "--out", str(tmp_path / "s")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "already pruned" in proc.stderr
    assert not (tmp_path / "s").exists()


def test_without_matplotlib_everything_but_the_plot_is_written(run_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result = sweep_checkpoint(run_dir, keeps=(1.0, 0.5), criteria=("depth",), onnx=False, out=run_dir / "s4")
    out = run_dir / "s4"
    assert "plot" not in result["files"] and not (out / "sweep.png").exists()
    for name in ("sweep.csv", "sweep.json", "sweep.md"):
        assert (out / name).stat().st_size > 0, name
