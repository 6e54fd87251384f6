"""tools/bench_real.py (B5 on real networks): the plan a variant of the retrofit gets, and the
report that keeps it apart. Nothing is run here (tests/tools/test_gpu_runs.py dry-runs the arms)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE = ["--out", "OUT", "--data-dir", "DATA", "--weights", "W", "--keeps", "0.333", "--seeds", "0"]


@pytest.fixture
def bench(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import bench_real

    for net in ("resnet20", "resnet32", "resnet56"):
        (tmp_path / f"{net}-x.th").write_bytes(b"")  # plan() only names the weights
    return bench_real


def plan_of(bench, monkeypatch, tmp_path, *extra, arms="b"):
    """The tasks `bench_real.py ARGS` would run, from its own parser (nothing runs)."""
    parsed = []
    monkeypatch.setattr(bench, "run_all", parsed.append)
    monkeypatch.setattr(bench, "report", lambda out: "")
    argv = [a.replace("OUT", str(tmp_path / "b5")) for a in BASE]
    argv[argv.index("W")] = str(tmp_path)
    bench.main([*argv, "--arms", arms, *extra])
    return [t for t in bench.plan(parsed[0]) if not t.name.startswith("adopt")]


def test_the_default_retrofit_passes_no_mechanism_flags(bench, monkeypatch, tmp_path):
    (task,) = plan_of(bench, monkeypatch, tmp_path)
    assert task.name == "b-k0.33-s0" and task.info["variant"] == ""
    train = task.commands[0]
    assert "--criterion" not in train and "--anneal-end" not in train


def test_a_varied_retrofit_is_named_apart_and_passes_its_flags(bench, monkeypatch, tmp_path):
    (task,) = plan_of(bench, monkeypatch, tmp_path, "--criterion", "ablation", "--anneal-end", "0.1")
    assert task.name == "b-k0.33-s0-ablation-end0.1" and task.info["variant"] == "ablation-end0.1"
    train, prune = task.commands
    assert train[train.index("--criterion") + 1] == "ablation" and train[train.index("--anneal-end") + 1] == "0.1"
    assert train[train.index("--out") + 1].endswith("runs/b-k0.33-s0-ablation-end0.1")
    assert prune[prune.index("--out") + 1].endswith("runs/b-k0.33-s0-ablation-end0.1/pruned")
    (only_end,) = plan_of(bench, monkeypatch, tmp_path, "--anneal-end", "0.25")
    assert only_end.name == "b-k0.33-s0-best-end0.25"
    (best,) = plan_of(bench, monkeypatch, tmp_path, "--criterion", "best")  # train's default: the default arm
    assert best.name == "b-k0.33-s0" and "--criterion" not in best.commands[0]


def test_an_anneal_end_outside_the_run_is_refused_before_anything_runs(bench, monkeypatch, tmp_path, capsys):
    with pytest.raises(SystemExit):
        plan_of(bench, monkeypatch, tmp_path, "--anneal-end", "0")
    assert "--anneal-end must be in (0, 1], got 0.0" in capsys.readouterr().err


def test_the_report_keeps_variants_in_rows_of_their_own(bench, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    common = dict(arm="b", keep=0.333, kept=9, seed=0, epochs=3, blocks=9, params=1000, flops=81e6, block_epochs=40)
    for name, variant, test, val in (("b-k0.33-s0", "", 79.0, 82.0), ("b-k0.33-s0-ablation", "ablation", 83.0, 86.0)):
        (results / f"{name}.json").write_text(json.dumps({"task": name, "variant": variant, "test_acc": test,
                                                          "val_acc": val, **common}))
    text = bench.report(tmp_path)
    rows = [line for line in text.splitlines() if line.startswith("| (b)")]
    assert rows == ["| (b) retrofit + prune | 79.00 | 82.00 | 1 | 9 | 1,000 | 81.0 | 40 (81) |",
                    "| (b) retrofit + prune [ablation] | 83.00 | 86.00 | 1 | 9 | 1,000 | 81.0 | 40 (81) |"]


def test_the_adapted_arm_prunes_e_s_network_after_it(bench, monkeypatch, tmp_path):
    e, ae = plan_of(bench, monkeypatch, tmp_path, arms="ae")  # (e) comes with it
    assert (e.name, ae.name, ae.needs) == ("e-s0", "ae-k0.33-s0", ["e-s0"])
    prune = ae.commands[0]
    assert prune[prune.index("prune") + 1] == e.commands[0][e.commands[0].index("--out") + 1]
    assert prune[prune.index("--heal") + 1] == "finetune"
    r = {"arm": "ae", "blocks": 9, "block_epochs": None}
    assert bench._block_epochs(r, 3) == "108 (162)"  # (e) 27 x 3 + 9 x 3; teachers: (e)'s own, then (e)
