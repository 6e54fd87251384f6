"""Where a prune is written: never over the checkpoint being pruned or another's prune, never half-written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from sdprune.depth.select import Budget
from sdprune.errors import SdpruneError
from sdprune.prune.heal import HealSpec
from sdprune.prune.pipeline import prune_checkpoint
from sdprune.train.checkpoint import load_checkpoint


def pruned_dirs(run: Path) -> list[Path]:
    return sorted(p for p in run.iterdir() if p.name.startswith("pruned"))


def test_out_never_replaces_the_checkpoint_being_pruned(own_run):
    source = (own_run / "checkpoint.pt").read_bytes()
    with pytest.raises(SdpruneError, match="is the checkpoint being pruned"):
        prune_checkpoint(own_run, Budget(keep=0.5), "depth", out=own_run, device="cpu")
    assert (own_run / "checkpoint.pt").read_bytes() == source
    assert sorted(p.name for p in own_run.iterdir()) == ["checkpoint.pt"]
    first = prune_checkpoint(own_run, Budget(keep=0.75), "depth", HealSpec.of("none"), device="cpu")
    folder = Path(first["checkpoint"]).parent
    with pytest.raises(SdpruneError, match="is the checkpoint being pruned"):  # re-pruning into its own folder
        prune_checkpoint(folder, Budget(keep=0.5), "depth", out=folder, device="cpu")


def test_out_replaces_only_a_pruned_checkpoint(own_run, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy2(own_run / "checkpoint.pt", other / "checkpoint.pt")  # a training checkpoint
    source = (other / "checkpoint.pt").read_bytes()
    with pytest.raises(SdpruneError, match="holds a checkpoint that is not a pruned one"):
        prune_checkpoint(own_run, Budget(keep=0.5), "depth", out=other, device="cpu")
    assert (other / "checkpoint.pt").read_bytes() == source
    # a prune made with other settings may be replaced when --out names its folder
    first = prune_checkpoint(own_run, Budget(keep=0.75), "depth", HealSpec.of("none"), device="cpu")
    folder = Path(first["checkpoint"]).parent
    s = prune_checkpoint(own_run, Budget(keep=0.5), "depth", HealSpec.of("none"), out=folder, device="cpu")
    assert load_checkpoint(folder)["meta"]["kept"] == s["kept"] and len(s["kept"]) == 5


def test_a_crash_while_writing_leaves_the_previous_prune_whole(run, tmp_path, monkeypatch):
    from sdprune.prune import output

    folder = tmp_path / "p"
    prune_checkpoint(run, Budget(keep=0.5), "depth", HealSpec.of("none"), out=folder, device="cpu")
    saved = {name: (folder / name).read_bytes() for name in ("checkpoint.pt", "summary.json")}

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(output, "write_json", disk_full)
    with pytest.raises(OSError, match="disk full"):
        prune_checkpoint(run, Budget(keep=0.75), "depth", HealSpec.of("none"), out=folder, device="cpu")
    assert {name: (folder / name).read_bytes() for name in saved} == saved  # not a new checkpoint, old summary
    assert sorted(p.name for p in folder.iterdir()) == sorted(saved)  # and nothing staged left behind


def test_two_checkpoints_of_one_folder_never_share_a_prune(own_run):
    first = prune_checkpoint(own_run, Budget(keep=0.75), "depth", HealSpec.of("none"), device="cpu")
    folder = Path(first["checkpoint"]).parent
    saved = (folder / "checkpoint.pt").read_bytes()
    shutil.copy2(own_run / "checkpoint.pt", own_run / "best.pt")
    with pytest.raises(SdpruneError, match="holds a prune of checkpoint.pt, not of best.pt; pass --out"):
        prune_checkpoint(own_run / "best.pt", Budget(keep=0.75), "depth", HealSpec.of("none"), device="cpu")
    assert (folder / "checkpoint.pt").read_bytes() == saved
    # The same prune again replaces it, and removes what a prune killed while writing left there.
    killed = folder / ".checkpoint.pt.999999999-new.tmp"  # pid > pid_max: a dead writer's
    killed.write_bytes(b"half")
    prune_checkpoint(own_run, Budget(keep=0.75), "depth", HealSpec.of("none"), device="cpu")
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "summary.json"]


def test_a_folder_with_an_unreadable_summary_says_so(own_run):
    folder = own_run / "pruned-keep0.50-depth"
    folder.mkdir()
    (folder / "summary.json").write_text("{cut short")
    with pytest.raises(SdpruneError, match="unreadable prune summary"):
        prune_checkpoint(own_run, Budget(keep=0.5), "depth", device="cpu")


@pytest.mark.parametrize("kwargs,message", [
    (dict(budget=Budget(max_params=1000)), "--max-params"), (dict(budget=Budget(keep_blocks=2)), "must stay"),
    (dict(budget=Budget(keep=0.5), criterion="largest"), "unknown criterion"),
])
def test_bad_input_writes_nothing(run, kwargs, message):
    before = pruned_dirs(run)
    with pytest.raises(SdpruneError, match=message):
        prune_checkpoint(run, device="cpu", **{"criterion": "depth", **kwargs})
    assert pruned_dirs(run) == before


def test_folder_names_say_what_was_asked():
    from sdprune.prune.output import folder_name

    assert folder_name("ablation", Budget(keep=0.5), HealSpec(), False, 0) == "pruned-keep0.50-ablation"
    assert (folder_name("survival", Budget(keep=0.25), HealSpec.of("finetune"), True, 3)
            == "pruned-keep0.25-survival-iterative-finetune-seed3")
    assert folder_name("norm", Budget(keep_blocks=7, max_params=150e3), HealSpec.of("none"), False, 0) == (
        "pruned-blocks7-params150k-norm-noheal")


def test_a_file_that_is_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(3)}, bogus)
    with pytest.raises(SdpruneError, match="not an sdprune checkpoint"):
        prune_checkpoint(bogus, Budget(keep=0.5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
