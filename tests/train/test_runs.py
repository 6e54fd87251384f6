"""Finding the newest run without a path: runs under runs/ and runs written anywhere with --out
(the runs index), pruned ones preferred where asked, said once the command starts its work."""

from __future__ import annotations

import shutil

import pytest

from sdprune.errors import SdpruneError
from sdprune.report import Reporter
from sdprune.train.config import TrainConfig
from sdprune.train.loop import train
from sdprune.train.runs import INDEX, find_checkpoints, record_run, resolve_checkpoint, runs_root

FAST = dict(model="resnet20", dataset="digits", epochs=1, batch_size=128, device="cpu")


@pytest.fixture
def here(tmp_path, monkeypatch):
    """Work in tmp_path, with the default runs folder there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SDPRUNE_RUNS", raising=False)
    return tmp_path


def test_the_newest_run_includes_runs_made_with_out(here, capsys):
    train(TrainConfig(**FAST))  # under runs/
    older = find_checkpoints()
    assert len(older) == 1 and older[0].parent.parent == runs_root()
    train(TrainConfig(out="elsewhere/run", **FAST))
    reporter = Reporter()
    picked = resolve_checkpoint(None, reporter=reporter)
    assert picked == here.joinpath("elsewhere", "run", "checkpoint.pt").relative_to(here)
    assert capsys.readouterr().err == ""  # said only once the command shows something else
    reporter.info("pruning ...")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("no checkpoint given: using the newest run, elsewhere/run/checkpoint.pt (written ")
    assert lines[1] == "pruning ..."
    # The index survives runs that are gone and lines it cannot read.
    with open(runs_root() / INDEX, "a") as f:
        f.write('{"run": "/nowhere", "kind": "train"}\n{"torn\n')
    shutil.rmtree("elsewhere")
    assert resolve_checkpoint(None) == older[0]


def test_pruned_runs_are_told_apart_by_the_index(here, tmp_path):
    (tmp_path / "runs").mkdir()
    trained, pruned = tmp_path / "trained", tmp_path / "small"  # neither under runs/, nor named pruned-...
    for folder, kind in ((trained, "train"), (pruned, "pruned")):
        folder.mkdir()
        (folder / "checkpoint.pt").write_bytes(b"x")
        record_run(folder, kind)
    assert resolve_checkpoint(None, prefer_pruned=True) == pruned.relative_to(tmp_path) / "checkpoint.pt"
    assert resolve_checkpoint(None) == trained.relative_to(tmp_path) / "checkpoint.pt"


def test_no_run_anywhere_is_one_clean_error(here):
    with pytest.raises(SdpruneError, match=f"no checkpoint given and no run found under runs/ or in its {INDEX}"):
        resolve_checkpoint(None)
