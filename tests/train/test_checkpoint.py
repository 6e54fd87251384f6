"""Atomic writes: shareable permissions, no temporary file left by a failure, and those a
killed process left removed by the next command (never those of a live one)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from torch import nn

from sdprune.train.checkpoint import save_checkpoint, write_json
from sdprune.files import atomic_write, remove_stale_temps


@pytest.fixture
def umask():
    """Set the process's umask for one test."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield os.umask
    os.umask(saved)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_files_get_the_users_umask_not_0600(tmp_path, umask, mask):
    umask(mask)
    write_json(tmp_path / "a.json", {"x": 1})
    save_checkpoint(tmp_path / "checkpoint.pt", nn.Linear(2, 2), {"kind": "test"})
    for name in ("a.json", "checkpoint.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})

    def half(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("{")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(tmp_path / "a.json", half)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert (tmp_path / "a.json").read_text() == '{\n  "x": 1\n}\n'


def test_stale_temporaries_go_and_live_ones_stay(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid is now a dead writer's
    dead, live = gone.pid, os.getpid()
    names = {f".checkpoint.pt.{dead}-k2x9.tmp": False, f".metrics.jsonl.{live}-a1b2.tmp": True,
             ".stats.json.q8w7e6r5.tmp": False,  # written before temporary names carried a pid
             "notes.tmp": True, ".hidden": True, "checkpoint.pt": True}
    for name in names:
        (tmp_path / name).write_text("x")
    stage = tmp_path / f".export.{dead}-zz.tmp"
    stage.mkdir()
    (stage / "model.onnx").write_text("x")
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted([stage.name] + [n for n, keep in names.items() if not keep])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, keep in names.items() if keep)
