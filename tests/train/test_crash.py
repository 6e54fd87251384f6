"""Crash tests: `sdprune train` killed (SIGKILL) or interrupted (SIGINT) at seeded moments resumes
to the very weights and metrics of a run that was never interrupted.

One run is carried through four real processes, each ended differently: killed inside
its first checkpoint write (``SDPRUNE_TEST_KILL_AT``, sdprune/faults.py), killed
at a random moment, killed between an epoch's checkpoint and its metrics line, and
interrupted by Ctrl-C at a random moment; then it is resumed to the end. Every
process after the first finds the lock file of a killed one.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdprune.train.checkpoint import build_model, load_checkpoint
from sdprune.train.config import TrainConfig
from sdprune.train.lock import LOCK_FILE
from sdprune.train.loop import train

pytestmark = pytest.mark.long  # started first: tests/conftest.py

EPOCHS = 5
CONFIG = dict(model="resnet20", dataset="digits", epochs=EPOCHS, batch_size=128, device="cpu")
FLAGS = ["--model", "resnet20", "--dataset", "digits", "--epochs", str(EPOCHS), "--batch-size", "128",
         "--device", "cpu"]
TIMING = {"time_s", "images_per_s"}


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def temps(run: Path) -> list[str]:
    return sorted(p.name for p in run.glob(".*.tmp"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same run, never interrupted (in this process: same thread count as the children)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train(TrainConfig(out=str(out), **CONFIG))
    return out


class Child:
    """`python -m sdprune train ...` in its own process, its stderr read line by line."""

    def __init__(self, args: list[str], env: dict, cwd: Path, kill_at: str | None = None) -> None:
        env = {**env, "SDPRUNE_RUNS": str(cwd / "runs")}
        if kill_at:
            env["SDPRUNE_TEST_KILL_AT"] = kill_at
        # Ctrl-C as a user's terminal delivers it, however the suite was started: a shell that
        # runs it in the background without job control (`cmd &` in a script) ignores SIGINT, its
        # children inherit that, and Python then leaves SIGINT ignored (the run would finish).
        self.proc = subprocess.Popen([sys.executable, "-m", "sdprune", "train", *args], env=env, cwd=cwd,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.lines: list[str] = []

    def wait_for(self, prefix: str) -> bool:
        """Read stderr until a line starts with ``prefix`` (False if the process ended first)."""
        for line in self.proc.stderr:
            self.lines.append(line)
            if line.startswith(prefix):
                return True
        return False

    def end(self, timeout: float = 120) -> tuple[int, str]:
        _, rest = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, "".join(self.lines) + rest


def test_killed_and_interrupted_runs_resume_bit_identical(reference, tmp_path, subprocess_env, same_training_state):
    rng = random.Random(12)
    run = tmp_path / "run"

    # 1. SIGKILL inside the first checkpoint write: the file is complete under its temporary
    #    name, not yet renamed. Only config.json (and the lock and that temporary file) remain.
    child = Child([*FLAGS, "--out", str(run)], subprocess_env, tmp_path, kill_at="write:checkpoint.pt@1")
    rc, err = child.end()
    assert rc == -signal.SIGKILL, err
    assert not (run / "checkpoint.pt").exists() and (run / "config.json").is_file()
    assert len(temps(run)) == 1 and temps(run)[0].startswith(f".checkpoint.pt.{child.proc.pid}-")
    assert (run / LOCK_FILE).read_text().strip() == str(child.proc.pid)  # a dead holder's lock

    # 2. Resume (the run starts over from config.json), SIGKILL at a random moment.
    child = Child(["--resume", str(run)], subprocess_env, tmp_path)
    assert child.wait_for("training "), child.end()[1]
    assert temps(run) == []  # the killed write's temporary file is gone
    time.sleep(rng.uniform(0.05, 0.6))
    child.proc.kill()
    assert child.end()[0] in (-signal.SIGKILL, 0)

    # 3. Resume, SIGKILL between the next epoch's checkpoint and its metrics line.
    child = Child(["--resume", str(run)], subprocess_env, tmp_path, kill_at="epoch-saved@1")
    rc, err = child.end()
    assert rc == -signal.SIGKILL, err
    saved = load_checkpoint(run)["meta"]["epoch"]
    assert 1 <= saved < EPOCHS and len(metrics(run)) == saved - 1  # that epoch's line is missing

    # 4. Resume, Ctrl-C at a random moment: exit 130, a loadable checkpoint, the resume command.
    child = Child(["--resume", str(run)], subprocess_env, tmp_path)
    assert child.wait_for("training "), child.end()[1]
    assert len(metrics(run)) == saved  # the missing line was restored from the checkpoint
    time.sleep(rng.uniform(0.05, 0.35))  # at least two epochs are left: well before the end
    child.proc.send_signal(signal.SIGINT)
    rc, err = child.end()
    assert rc == 130, err
    assert err.splitlines()[-1] == f"sdprune train: interrupted; resume with `sdprune train --resume {run}`"
    build_model(load_checkpoint(run))

    # 5. Resume to the end (in this process): the weights and metrics of the uninterrupted run.
    train(TrainConfig(), resume=run)
    a, b = load_checkpoint(reference), load_checkpoint(run)
    assert a["meta"]["epoch"] == b["meta"]["epoch"] == EPOCHS
    same_training_state(a, b)
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    assert untimed(rows) == untimed(metrics(reference))
    assert temps(run) == []


def test_resuming_a_finished_run_restores_its_last_metrics_line(reference, tmp_path):
    """A run killed between its last checkpoint and its last metrics line: resuming it writes the line."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoint.pt", "config.json"):
        (run / name).write_bytes((reference / name).read_bytes())
    lines = (reference / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(lines[:-1]))
    summary = train(TrainConfig(), resume=run)
    assert (run / "metrics.jsonl").read_text() == "".join(lines)
    assert summary["final"]["epoch"] == EPOCHS
