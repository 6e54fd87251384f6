"""`sdprune train` end to end, and its one-line errors on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sdprune.cli import main

MODELS = Path(__file__).resolve().parents[2] / "models"
FAST = ["--model", "resnet20", "--epochs", "1", "--batch-size", "128", "--device", "cpu"]


def sdprune(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdprune", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.long
def test_train_end_to_end_with_json(tmp_path, subprocess_env, monkeypatch):
    env = {**subprocess_env, "SDPRUNE_RUNS": str(tmp_path / "runs")}
    proc = sdprune(["train", "--recipe", str(MODELS / "quickstart.toml"), *FAST, "--json"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)  # the whole of stdout is one JSON object
    assert isinstance(summary, dict)
    assert (summary["model"], summary["dataset"], summary["epochs"], summary["blocks"]) == ("resnet20", "digits", 1, 9)
    final = summary["final"]
    assert final["epoch"] == 1 and 0 <= final["test_acc"] <= 100 and final["step"] == 10
    # Piped: plain progress lines on stderr, no terminal control codes.
    assert "epoch 1/1" in proc.stderr and "\x1b[" not in proc.stderr
    assert "Traceback" not in proc.stderr
    run = Path(summary["run"])
    assert run.parent == tmp_path / "runs" and run.name.startswith("resnet20-digits-linear-")
    saved = json.loads((run / "config.json").read_text())  # the resolved config
    assert (saved["dataset"], saved["epochs"], saved["batch_size"], saved["model"]) == ("digits", 1, 128, "resnet20")
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    # Later commands find the newest run without being told.
    from sdprune.train.runs import resolve_checkpoint
    monkeypatch.setenv("SDPRUNE_RUNS", str(tmp_path / "runs"))
    assert resolve_checkpoint(None) == run / "checkpoint.pt"


def test_quiet_prints_nothing(tmp_path, capsys):
    assert main(["train", *FAST, "--out", str(tmp_path / "run"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_a_run_interrupted_before_its_first_checkpoint_is_started_over(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"model": "resnet32"}')  # all a first epoch killed leaves
    assert main(["train", *FAST, "--out", str(run), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == f"warning: {run} holds a run interrupted before its first checkpoint; starting it over\n"
    assert json.loads((run / "config.json").read_text())["model"] == "resnet20"
    assert (run / "checkpoint.pt").is_file()


def bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """Each case: flags and the message it must give. Writes the garbage checkpoint."""
    garbage = tmp_path / "garbage.pt"
    if tmp_path.is_dir():
        garbage.write_bytes(b"\x00not a checkpoint\xff" * 10)
    return {
        "unknown model": (["--model", "resnet21"], "unknown model 'resnet21'"),
        "unknown dataset": (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        "missing data folder": (["--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere")], "does not exist"),
        "zero epochs": (["--epochs", "0"], "--epochs must be at least 1"),
        "p_last 0": (["--p-last", "0"], "--p-last must be in"),
        "p_last 1.5": (["--p-last", "1.5"], "--p-last must be in"),
        "unreadable checkpoint": (["--resume", str(garbage)], "not a readable sdprune checkpoint"),
        "missing checkpoint": (["--resume", str(tmp_path / "none.pt")], "not found"),
        "nothing to resume": (["--resume"], "no run found"),
    }


CASES = list(bad_inputs(Path("/nonexistent-folder")))


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SDPRUNE_RUNS", str(tmp_path / "runs"))
    argv, message = bad_inputs(tmp_path)[case]
    out_dir = tmp_path / "out"
    assert main(["train", "--model", "resnet20", "--out", str(out_dir), *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("sdprune train: error: ") and message in err
    assert not out_dir.exists() and not (tmp_path / "runs").exists()  # nothing left behind


@pytest.mark.parametrize("case", ["zero epochs", "unreadable checkpoint"])
def test_bad_input_in_a_real_process(case, tmp_path, subprocess_env):
    env = {**subprocess_env, "SDPRUNE_RUNS": str(tmp_path / "runs")}
    argv, message = bad_inputs(tmp_path)[case]
    proc = sdprune(["train", *argv, "--json"], env, tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()
