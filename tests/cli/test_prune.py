"""`sdprune stats`, `sdprune prune`, `sdprune eval` on the command line, bad input included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdprune.cli import main
from sdprune.train.config import TrainConfig
from sdprune.train.loop import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-runs")
    train(TrainConfig(model="resnet20", epochs=1, out=str(root / "r20")))
    return root


@pytest.fixture
def in_runs(runs, monkeypatch) -> Path:
    monkeypatch.setenv("SDPRUNE_RUNS", str(runs))
    return runs / "r20"


def call(capsys, *argv: str) -> tuple[int, dict | None, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if "--json" in argv and rc == 0 else None), err


def outputs(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir())


def test_stats_of_the_newest_run(in_runs, capsys):
    rc, doc, _ = call(capsys, "stats", "--json", "--device", "cpu", "--images", "64")
    assert rc == 0 and len(doc["blocks"]) == 9 and doc["images"] == 64
    assert json.loads((in_runs / "stats.json").read_text())["blocks"] == doc["blocks"]


def test_prune_says_what_it_scores_before_scoring(in_runs, capsys, tmp_path):
    """Drop-one on a real validation slice takes minutes: the first line comes before it, not after."""
    rc, _, err = call(capsys, "prune", "--keep", "0.5", "--criterion", "ablation", "--stats-images", "16",
                      "--no-heal", "--device", "cpu", "--out", str(tmp_path / "p"))
    lines = err.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("scoring"))
    assert rc == 0 and lines[first] == "scoring 9 blocks by ablation on 16 validation images"
    assert first < next(i for i, line in enumerate(lines) if line.startswith("pruning "))


def test_prune_then_eval(in_runs, capsys, tmp_path):
    rc, s, _ = call(capsys, "prune", "--keep", "0.5", "--criterion", "depth", "--json", "--device", "cpu")
    assert rc == 0 and len(s["kept"]) == 5 and s["removed"][-1] == "stages.2.2"
    assert s["params"]["after"] < s["params"]["before"]
    assert set(s["after"]) == {"val", "test"} and set(s["unpruned"]) == {"val", "test"}
    assert Path(s["checkpoint"]).parent == in_runs / "pruned-keep0.50-depth"
    rc, e, _ = call(capsys, "eval", str(in_runs / "pruned-keep0.50-depth"), "--json", "--device", "cpu")
    assert rc == 0 and e["kind"] == "pruned" and e["blocks"] == {"kept": 5, "total": 9}
    assert e["test"]["acc"] == pytest.approx(s["after"]["test"]["acc"])
    assert e["params"] == s["params"]["after"]
    # a human run prints a table, not JSON
    rc, _, _ = call(capsys, "prune", str(in_runs), "--keep-blocks", "8", "--no-heal", "--out",
                    str(tmp_path / "human"), "--criterion", "every-other", "--device", "cpu")
    assert rc == 0 and (tmp_path / "human" / "checkpoint.pt").is_file()


def test_eval_of_an_onnx_file_goes_to_the_artifact_module(monkeypatch, capsys, tmp_path):
    import sdprune.deploy.runtime

    seen = {}

    def fake(path, dataset=None, data_dir=None, batch_size=256, reporter=None):
        seen.update(path=path, dataset=dataset, batch_size=batch_size)
        return {"model": path, "dataset": "digits", "test": {"acc": 91.0, "loss": 0.3}}

    monkeypatch.setattr(sdprune.deploy.runtime, "evaluate_onnx", fake)
    rc, result, _ = call(capsys, "eval", str(tmp_path / "m.onnx"), "--dataset", "digits", "--batch-size", "64",
                         "--json")
    assert rc == 0 and result["test"]["acc"] == 91.0
    assert seen == {"path": str(tmp_path / "m.onnx"), "dataset": "digits", "batch_size": 64}


@pytest.mark.parametrize("args,message", [
    (["--keep", "0"], "--keep"), (["--keep", "1.5"], "--keep"), (["--keep", "nan"], "--keep"),
    (["--keep", "-0.25"], "--keep"), (["--max-params", "1k"], "--max-params"),
    (["--max-flops", "1000"], "--max-flops"), (["--keep-blocks", "0"], "leaves no block"),
    (["--keep-blocks", "1"], "must stay"),
])
def test_bad_prune_input_is_one_line_and_writes_nothing(in_runs, capsys, args, message):
    before = outputs(in_runs)
    rc, _, err = call(capsys, "prune", *args, "--criterion", "depth", "--device", "cpu")
    assert rc == 2 and message in err and err.count("\n") == 1 and err.startswith("sdprune prune: error:")
    assert outputs(in_runs) == before


def test_unknown_criterion_and_not_a_checkpoint(in_runs, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "--keep", "0.5", "--criterion", "biggest"])
    assert exit_info.value.code == 2 and "invalid choice: 'biggest'" in capsys.readouterr().err
    bogus = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(2)}, bogus)
    for command in (["prune", str(bogus), "--keep", "0.5"], ["stats", str(bogus)], ["eval", str(bogus)]):
        rc, _, err = call(capsys, *command)
        assert rc == 2 and "not an sdprune checkpoint" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.pt"]


def test_exit_code_of_the_real_command(in_runs, subprocess_env, tmp_path):
    env = {**subprocess_env, "SDPRUNE_RUNS": str(in_runs.parent)}
    proc = subprocess.run([sys.executable, "-m", "sdprune", "prune", "--keep", "nan"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["sdprune prune: error: --keep must be a fraction in (0, 1], got nan"]


# --- issue 9: the reference, BN healing only where it helps, one folder per prune --------------


def test_the_unpruned_reference_is_healed_like_the_pruned_network(in_runs, capsys, tmp_path):
    from sdprune.data.bundle import data_for_checkpoint
    from sdprune.prune.heal import recalibrate_bn
    from sdprune.train.checkpoint import build_model, load_checkpoint
    from sdprune.train.evaluate import assess

    rc, s, _ = call(capsys, "prune", "--keep", "0.5", "--criterion", "depth", "--json", "--device", "cpu",
                    "--out", str(tmp_path / "p"))
    assert rc == 0
    ref = s["reference"]
    assert ref["trained"] == s["unpruned"]
    ckpt = load_checkpoint(in_runs)
    model, data = build_model(ckpt), data_for_checkpoint(ckpt["meta"])
    recalibrate_bn(model, data, "cpu", 20, seed=0)  # the unpruned network, BN re-estimated by hand
    by_hand = assess(model, data)
    for split in ("val", "test"):
        assert ref["recalibrated"][split] == pytest.approx(by_hand[split])
    assert ref["recalibrated"] != ref["trained"]  # the case this test is about
    # the reference the cost is measured against: healed by the same rule as the pruned network
    better = ref["recalibrated"]["val"]["acc"] > ref["trained"]["val"]["acc"] or (
        ref["recalibrated"]["val"]["acc"] == ref["trained"]["val"]["acc"]
        and ref["recalibrated"]["val"]["loss"] < ref["trained"]["val"]["loss"])
    assert ref["statistics"] == ("recalibrated" if better else "trained")
    assert ref["healed"] == ref[ref["statistics"]]
    for split in ("val", "test"):
        assert s["change"][split] == pytest.approx(s["after"][split]["acc"] - ref["healed"][split]["acc"])


def test_prune_table_shows_both_references(in_runs, capsys, tmp_path):
    rc = main(["prune", "--keep", "0.5", "--criterion", "depth", "--device", "cpu", "--out", str(tmp_path / "t")])
    out, _ = capsys.readouterr()
    assert rc == 0
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert "as trained" in out and "BN re-estimated" in out
    assert f"{summary['reference']['recalibrated']['test']['acc']:.2f}" in out
    assert f"{summary['change']['test']:+.2f}" in out


def test_two_criteria_never_share_a_folder(in_runs, capsys):
    from sdprune.train.runs import find_checkpoints

    rc, a, _ = call(capsys, "prune", "--keep", "0.75", "--criterion", "depth", "--json", "--device", "cpu")
    assert rc == 0
    rc, b, _ = call(capsys, "prune", "--keep", "0.75", "--criterion", "every-other", "--json", "--device", "cpu")
    assert rc == 0
    first, second = Path(a["checkpoint"]).parent, Path(b["checkpoint"]).parent
    assert first != second and first.parent == second.parent == in_runs
    assert first.name == "pruned-keep0.75-depth" and second.name == "pruned-keep0.75-every-other"
    assert json.loads((first / "summary.json").read_text())["criterion"] == "depth"
    found = find_checkpoints(in_runs.parent, pruned=True)
    assert first / "checkpoint.pt" in found and second / "checkpoint.pt" in found
    assert in_runs / "checkpoint.pt" in find_checkpoints(in_runs.parent, pruned=False)


def test_a_folder_holding_another_prune_is_not_overwritten(in_runs, capsys, tmp_path):
    args = ["prune", "--keep", "0.75", "--criterion", "depth", "--device", "cpu", "-q"]
    assert main(args) == 0
    folder = in_runs / "pruned-keep0.75-depth"
    written = (folder / "summary.json").read_bytes()
    rc, _, err = call(capsys, *args, "--allow-empty-stage")  # other settings, same name
    assert rc == 2 and err.count("\n") == 1 and "--out" in err
    assert (folder / "summary.json").read_bytes() == written
    assert main(args + ["--allow-empty-stage", "--out", str(tmp_path / "elsewhere")]) == 0
    assert main(args) == 0  # the identical command may overwrite its own result
