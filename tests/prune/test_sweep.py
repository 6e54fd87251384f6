"""`sdprune sweep`: outputs, exact keep=1.0, choices made on the validation slice only."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from sdprune.depth.select import Budget
from sdprune.errors import SdpruneError
from sdprune.prune.heal import HealSpec
from sdprune.prune.pipeline import prune_checkpoint
from sdprune.prune.sweep import check_sweep, sweep_checkpoint


@pytest.fixture(scope="module")
def run_dir(trained_run):
    return trained_run


@pytest.mark.long
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
        assert result["unpruned"]["trained"]["test_acc"] == s["unpruned"]["test"]["acc"]


def test_the_cost_is_measured_against_the_reference_healed_the_same_way(run_dir, tmp_path):
    result = sweep_checkpoint(run_dir, keeps=(1.0, 0.5), criteria=("depth",), onnx=False, out=tmp_path)
    u = result["unpruned"]
    assert u["recalibrated"] != u["trained"]  # BN re-estimation changes the unpruned network
    assert u["test_acc"] == u[u["statistics"]]["test_acc"] and u["val_acc"] == u[u["statistics"]]["val_acc"]
    for p in result["points"]:
        assert p["change"] == p["test_acc"] - u["test_acc"]
    report = (tmp_path / "sweep.md").read_text()
    assert f"{u['trained']['test_acc']:.2f}% as trained" in report
    assert f"{u['recalibrated']['test_acc']:.2f}% with BatchNorm statistics re-estimated" in report
    without = sweep_checkpoint(run_dir, keeps=(0.5,), criteria=("depth",), heal_spec=HealSpec.of("none"),
                               onnx=False, out=tmp_path / "none")
    assert without["unpruned"]["statistics"] == "trained" and without["points"][0]["bn"] is None
    assert without["unpruned"]["recalibrated"] == u["recalibrated"]  # reported all the same


def test_sweep_points_keep_trained_statistics_where_re_estimation_hurts(run_dir, tmp_path, heal_on_zeros):
    import sdprune.prune.sweep as sweep_mod

    heal_on_zeros(sweep_mod)
    result = sweep_checkpoint(run_dir, keeps=(0.5,), criteria=("depth",), onnx=False, out=tmp_path)
    point = result["points"][0]
    assert point["bn"]["after"]["val"]["acc"] < point["bn"]["before"]["val"]["acc"]
    assert point["bn"]["statistics"] == "trained" and point["test_acc"] == point["unhealed"]["test"]["acc"]


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


@pytest.mark.long
def test_latency_is_relative_to_the_unpruned_network_without_keep_one(run_dir, tmp_path, monkeypatch):
    """No point keeps every block: the unpruned network is still exported and timed, first."""
    import sdprune.prune.sweep as sweep_mod

    seen = {}
    real = sweep_mod.bench_onnx

    def spy(files, **kwargs):
        seen["files"], seen["result"] = list(files), real(files, **kwargs)
        return seen["result"]

    monkeypatch.setattr(sweep_mod, "bench_onnx", spy)
    result = sweep_checkpoint(run_dir, keeps=(0.5,), criteria=("depth",), onnx=True, bench_repeats=2,
                              out=tmp_path)
    u, (point,) = result["unpruned"], result["points"]
    timed = seen["result"]["models"]
    assert len(timed) == 2  # the unpruned network first, then the one pruned architecture
    assert u["latency_ms"] == timed[0]["latency"]["1"]["p50_ms"] and u["latency_ratio"] == 1.0
    assert point["latency_ratio"] == timed[1]["latency"]["1"]["ratio"] and point["onnx_bytes"] < u["onnx_bytes"]
    assert (tmp_path / "sweep.png").stat().st_size > 0


def test_sweep_refuses_a_keep_above_what_a_pruned_checkpoint_holds_before_any_work(run_dir, tmp_path,
                                                                                   monkeypatch):
    import sdprune.prune.sweep as sweep_mod

    pruned = prune_checkpoint(run_dir, Budget(keep_blocks=7), "depth", HealSpec.of("none"), out=tmp_path / "p")
    monkeypatch.setattr(sweep_mod, "build_model", lambda *a: pytest.fail("loaded a network for nothing"))
    with pytest.raises(SdpruneError, match="already pruned to 7 of 9 blocks: cannot keep 9"):
        sweep_checkpoint(pruned["checkpoint"], keeps=(0.5, 0.9), criteria=("depth",), onnx=False,
                         out=tmp_path / "s")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("kwargs,message", [({"bench_repeats": 0}, "--repeats"), ({"threads": 0}, "--threads"),
                                            ({"batch_size": 0}, "batch size"),
                                            ({"stats_images": 0}, "at least 1 image")])
def test_sweep_settings_are_checked_before_loading(tmp_path, kwargs, message):
    with pytest.raises(SdpruneError, match=message):
        sweep_checkpoint(tmp_path / "missing" / "checkpoint.pt", keeps=(0.5,), criteria=("depth",), **kwargs)


def test_sweep_takes_the_options_prune_takes(run_dir, tmp_path):
    """Empty stages, statistics images and healing: the same point as `sdprune prune` with the same options."""
    heal = HealSpec.of("bn", 0.1, distill=False)
    result = sweep_checkpoint(run_dir, keeps=(0.2,), criteria=("ablation",), heal_spec=heal, onnx=False,
                              keep_stages=False, stats_images=64, batch_size=32, out=tmp_path / "s")
    s = prune_checkpoint(run_dir, Budget(keep=0.2, keep_stages=False), "ablation", heal, stats_images=64,
                         batch_size=32, out=tmp_path / "p")
    (point,) = result["points"]
    assert point["blocks"] == 2 and point["kept"] == s["kept"]  # one stage left empty, as asked
    swept, pruned = ({k: v for k, v in f.items() if k != "wall_s"} for f in (point["finetune"], s["finetune"]))
    assert point["test_acc"] == s["after"]["test"]["acc"] and swept == pruned  # all but the wall time
    assert not s["distill"] and result["distill"] is False and result["stats_images"] == 64


def test_a_sweep_with_other_settings_is_not_overwritten(run_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy2(run_dir / "checkpoint.pt", run / "checkpoint.pt")
    sweep_checkpoint(run, keeps=(0.5,), criteria=("depth",), onnx=False)
    written = (run / "sweep.json").read_bytes()
    with pytest.raises(SdpruneError, match="holds a sweep made with other settings .*pass --out"):
        sweep_checkpoint(run, keeps=(0.75,), criteria=("depth",), onnx=False)
    assert (run / "sweep.json").read_bytes() == written
    shutil.copy2(run / "checkpoint.pt", run / "best.pt")  # another checkpoint of the folder, same settings
    with pytest.raises(SdpruneError, match="holds a sweep of checkpoint.pt, not of best.pt; pass --out"):
        sweep_checkpoint(run / "best.pt", keeps=(0.5,), criteria=("depth",), onnx=False)
    assert (run / "sweep.json").read_bytes() == written
    sweep_checkpoint(run, keeps=(0.5,), criteria=("depth",), onnx=False)  # the same sweep may be redone
    sweep_checkpoint(run, keeps=(0.75,), criteria=("depth",), onnx=False, out=run)  # --out: anything goes


def _result(changes: dict[float, float], present: int = 8) -> dict:
    """A sweep result with one point per keep: its change from pruning, blocks kept 8 * keep."""
    points = [{"criterion": "depth", "keep": k, "blocks": round(present * k), "val_acc": 90.0 + c,
               "test_acc": 90.0 + c, "change": c, "bn": None, "params": 1000} for k, c in changes.items()]
    return {"model": "m", "dataset": "d", "checkpoint": "c", "heal": "bn", "blocks_present": present,
            "unpruned": {"params": 2000, "test_acc": 90.0, "statistics": "trained",
                         "trained": {"test_acc": 90.0}, "recalibrated": {"test_acc": 89.0}},
            "points": points}


def test_the_report_says_where_pruning_stops_being_free():
    from sdprune.prune.sweep_plot import report_markdown

    free = report_markdown(_result({1.0: 0.0, 0.75: -0.5, 0.5: -2.0, 0.25: -0.8}), {})
    assert "costs at most 1 point down to keep 0.75 (6 blocks)" in free  # stops at 0.5, whatever 0.25 does
    costly = report_markdown(_result({1.0: 0.0, 0.5: -3.0}), {})
    assert "Already the mildest pruning (keep 0.5, 4 blocks) costs more than 1 point" in costly
    assert "keep 1" not in costly.split("|")[-1]
    nothing = report_markdown(_result({1.0: 0.0}), {})
    assert "No point removes a block" in nothing
