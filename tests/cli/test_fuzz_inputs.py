"""Fuzz corpus, everything but checkpoints (test_fuzz_checkpoints.py) and malformed files
(test_fuzz_files.py: ONNX files, image folders): a table of bad flags for every subcommand, output
locations that cannot be written, link loops and broken runs. Each case is refused with exit 2, one
line on stderr naming the problem, no traceback and nothing written (the ``refused`` fixture)."""

from __future__ import annotations

import os
import tempfile

import pytest

# {ckpt}: a valid checkpoint in run/; {onnx}: a valid tiny ONNX model; {file}: a plain file; {dir}: a folder;
# {tmp}: the test's folder (the runs folder, the working folder and default outputs are all inside it).
RUN = ["--device", "cpu"]
FLAGS: list[tuple[str, list[str], str]] = [
    # models
    ("models", ["--classes", "0"], "--classes must be 1 to"),
    ("models", ["--classes", "-1"], "--classes must be 1 to"),
    ("models", ["--classes", "100000000"], "--classes must be 1 to"),
    ("models", ["--classes", "ten"], "invalid int value"),
    ("models", ["resnet21"], "unknown model"),
    # train
    *[("train", ["--momentum", v], "--momentum must be in [0, 1)") for v in ("-1", "nan", "1", "inf")],
    ("train", ["--init", "{file}/missing.pt"], "not found"),
    ("train", ["--init", ""], "--init needs a path"),
    ("train", ["--init", "{file}", "--distill", "1.5"], "--distill must be in [0, 1]"),
    ("train", ["--init", "{file}", "--distill", "nan"], "--distill must be in [0, 1]"),
    ("train", ["--distill", "0.5"], "--distill needs --init"),
    ("train", ["--distill-temperature", "2"], "--distill-temperature needs --init"),
    ("train", ["--init", "{file}", "--distill-temperature", "0"], "--distill-temperature must be a positive"),
    *[("train", ["--lr", v], "--lr must be a positive number") for v in ("0", "-1", "nan", "inf")],
    *[("train", ["--seed", v], "--seed must be") for v in ("-1", "99999999999999999999999")],
    *[("train", ["--image-size", v, "--dataset", "synthetic"], "--image-size must be") for v in ("-4", "0", "100000")],
    *[("train", ["--epochs", v], "--epochs must be at least 1") for v in ("0", "-1")],
    ("train", ["--epochs", "1.5"], "invalid int value"),
    ("train", ["--batch-size", "0"], "--batch-size must be at least 1"),
    ("train", ["--model", "tv_resnet18", "--batch-size", "1"], "--batch-size 1 leaves BatchNorm one value per channel"),
    *[("train", ["--weight-decay", v], "--weight-decay must be") for v in ("-1", "nan", "inf")],
    *[("train", ["--warmup-epochs", v], "--warmup-epochs must be") for v in ("nan", "-1", "inf")],
    *[("train", ["--label-smoothing", v], "--label-smoothing must be") for v in ("1", "-0.1", "nan")],
    *[("train", ["--p-last", v], "--p-last must be") for v in ("0", "1.5", "nan")],
    *[("train", ["--p-min", v], "--p-min must be") for v in ("1", "-0.1")],
    ("train", ["--target-survival", "0.5"], "needs --survival learned"),
    ("train", ["--survival", "learned", "--target-keep", "2"], "--target-keep must be in"),
    ("train", ["--survival", "learned", "--target-survival", "0.01"], "below --p-min"),
    ("train", ["--survival", "sometimes"], "--survival must be one of"),
    ("train", ["--drop-mode", "column"], "--drop-mode must be one of"),
    ("train", ["--lr-schedule", "linear"], "invalid choice"),
    ("train", ["--dataset", "imagenet"], "unknown dataset"),
    ("train", ["--model", "resnet21"], "unknown model"),
    *[("train", ["--workers", v], "--workers must be") for v in ("-1", "100000")],
    ("train", ["--lr-milestones", "-1"], "--lr-milestones must be"),
    ("train", ["--lr-milestones", "x"], "comma-separated integers"),
    ("train", ["--device", "tpu"], "unknown device"),
    ("train", ["--resume", "{tmp}/none.pt"], "not found"),
    ("train", ["--resume"], "no run found"),
    ("train", ["--dataset", "imagefolder"], "needs --data-dir"),
    ("train", ["--dataset", "mnist", "--data-dir", "{tmp}/nowhere"], "does not exist"),
    ("train", ["--dataset", "imagefolder", "--data-dir", "{file}"], "does not exist"),
    ("train", ["--recipe", "{dir}"], "cannot read recipe"),
    ("train", ["--recipe", "{tmp}/none.toml"], "not found"),
    ("train", ["--recipe", "{recipe:epochs = }"], "not valid TOML"),
    ("train", ["--recipe", '{recipe:epochs = "3"}'], "config key 'epochs' must be a whole number"),
    ("train", ["--recipe", "{recipe:lr = [0.1]}"], "config key 'lr' must be a number"),
    ("train", ["--recipe", '{recipe:lr_milestones = ["a"]}'], "config key 'lr_milestones' must be"),
    ("train", ["--recipe", "{recipe:download = 1}"], "config key 'download' must be true/false"),
    ("train", ["--recipe", "{recipe:momentum = -1.0}"], "--momentum must be"),
    ("train", ["--recipe", "{recipe:colour = 3}"], "unknown key"),
    ("train", ["--out", "{file}"], "is a file"),
    ("train", ["--out", "{file}/run"], "is a file, not a folder"),
    # stats
    ("stats", ["{ckpt}", "--batch-size", "0"], "batch size must be at least 1"),
    *[("stats", ["{ckpt}", "--images", v], "need at least 1 image") for v in ("0", "-1")],
    ("stats", ["{ckpt}", "--out", "{dir}"], "is a folder"),
    ("stats", ["{ckpt}", "--out", "{file}/stats.json"], "is a file, not a folder"),
    ("stats", ["{ckpt}", "--device", "tpu"], "unknown device"),
    ("stats", ["{tmp}/none.pt"], "not found"),
    ("stats", [], "no run found"),
    # prune
    *[("prune", ["{ckpt}", "--keep", v], "--keep must be a fraction") for v in ("0", "1.5", "nan", "inf", "-1")],
    ("prune", ["{ckpt}", "--keep-blocks", "0"], "leaves no block"),
    ("prune", ["{ckpt}", "--keep-blocks", "1000"], "cannot keep 1000"),
    *[("prune", ["{ckpt}", "--max-params", v], "--max-params must be positive") for v in ("inf", "nan", "0", "-5")],
    ("prune", ["{ckpt}", "--max-params", "lots"], "expected a number"),
    ("prune", ["{ckpt}", "--max-flops", "inf"], "--max-flops must be positive"),
    ("prune", ["{ckpt}"], "say how much to keep"),
    ("prune", ["{ckpt}", "--keep", "0.5", "--criterion", "vibes"], "invalid choice"),
    ("prune", ["{ckpt}", "--keep", "0.5", "--heal", "magic"], "invalid choice"),
    ("prune", ["{ckpt}", "--keep", "0.5", "--heal", "none", "--finetune-epochs", "1"], "fine-tunes nothing"),
    ("prune", ["{ckpt}", "--keep", "0.5", "--heal", "finetune", "--finetune-epochs", "0"], "above 0"),
    *[("prune", ["{ckpt}", "--keep", "0.5", "--finetune-epochs", v], "--finetune-epochs must be")
      for v in ("inf", "nan", "-1")],
    *[("prune", ["{ckpt}", "--keep", "0.5", "--seed", v], "--seed must be") for v in ("-1", str(2**70))],
    ("prune", ["{ckpt}", "--keep", "0.5", "--batch-size", "0"], "batch size must be at least 1"),
    ("prune", ["{ckpt}", "--keep", "0.5", "--stats-images", "0"], "need at least 1 image"),
    ("prune", ["{ckpt}", "--keep", "0.5", "--out", "{file}"], "is a file"),
    ("prune", ["{ckpt}", "--keep", "0.5", "--out", "{file}/pruned"], "is a file, not a folder"),
    ("prune", ["{ckpt}", "--keep", "0.5", "--out", "{tmp}/run"], "is the checkpoint being pruned"),
    ("prune", ["{ckpt}", "--keep", "0.5", "--device", "tpu"], "unknown device"),
    # eval
    ("eval", ["{ckpt}", "--batch-size", "0"], "--batch-size must be at least 1"),
    ("eval", ["{ckpt}", "--dataset", "imagenet", *RUN], "unknown dataset"),
    ("eval", ["{ckpt}", "--device", "tpu"], "unknown device"),
    ("eval", ["{tmp}/none.pt"], "not found"),
    ("eval", ["{tmp}/model.ort"], ".ort files carry no sdprune metadata"),
    ("eval", ["{onnx}", "--batch-size", "0"], "at least 1"),
    # export
    *[("export", ["{ckpt}", "--opset", v], "--opset") for v in ("5", "100")],
    *[("export", ["{ckpt}", "--atol", v], "--atol must be >= 0") for v in ("-1", "nan", "inf")],
    ("export", ["{ckpt}", "--samples", "0"], "--samples must be at least 1"),
    ("export", ["{ckpt}", "--int8", "--calib-batches", "0"], "--calib-batches must be at least 1"),
    *[("export", ["{ckpt}", "--int8-min-clear-agreement", v], "--int8-min-clear-agreement must be between 0 and 100")
      for v in ("101", "nan", "-1")],
    *[("export", ["{ckpt}", "--int8-max-drop", v], "--int8-max-drop must be between 0 and 100") for v in ("nan", "-1")],
    ("export", ["{ckpt}", "--target", "riscv"], "invalid choice"),
    ("export", ["{ckpt}", "--out", "{file}"], "is a file"),
    ("export", ["{ckpt}", "--out", "{file}/export"], "is a file, not a folder"),
    # bench
    *[("bench", ["{onnx}", "--threads", v], "--threads must be 1 to") for v in ("0", "-2", "100000")],
    ("bench", ["{onnx}", "--repeats", "0"], "--repeats >= 1"),
    ("bench", ["{onnx}", "--warmup", "-1"], "--warmup >= 0"),
    ("bench", ["{onnx}", "--batch-sizes", "0"], "batch sizes must be positive"),
    ("bench", ["{onnx}", "--batch-sizes", "one"], "comma-separated integers"),
    ("bench", ["{onnx}", "--batch-sizes", "100000000"], "GiB of input"),
    ("bench", ["{tmp}/none.onnx"], "not found"),
    # sweep
    *[("sweep", ["{ckpt}", "--keep", v], "every --keep value must be in (0, 1]") for v in ("0", "1.5", "nan", "inf")],
    ("sweep", ["{ckpt}", "--keep", ","], "--keep needs at least one value"),
    ("sweep", ["{ckpt}", "--keep", "half"], "comma-separated numbers"),
    ("sweep", ["{ckpt}", "--criteria", "vibes"], "unknown criterion"),
    ("sweep", ["{ckpt}", "--criteria", ","], "--criteria needs at least one"),
    ("sweep", ["{ckpt}", "--repeats", "0"], "--repeats >= 1"),
    *[("sweep", ["{ckpt}", "--threads", v], "--threads must be 1 to") for v in ("0", "100000")],
    *[("sweep", ["{ckpt}", "--finetune-epochs", v], "--finetune-epochs must be") for v in ("-1", "inf", "nan")],
    ("sweep", ["{ckpt}", "--seed", "-1"], "--seed must be"),
    ("sweep", ["{ckpt}", "--batch-size", "0"], "batch size must be at least 1"),
    ("sweep", ["{ckpt}", "--stats-images", "0"], "need at least 1 image"),
    ("sweep", ["{ckpt}", "--out", "{file}"], "is a file"),
    ("sweep", ["{ckpt}", "--keep", "0.01", "--keep-blocks", "3"], "unrecognized arguments"),
]
# A location no one may write to, even root (sysfs); skipped where there is none.
UNWRITABLE = "/sys/sdprune-fuzz"
READ_ONLY = [
    ("train", ["--out", UNWRITABLE]),
    ("stats", ["{ckpt}", "--out", f"{UNWRITABLE}/stats.json"]),
    ("prune", ["{ckpt}", "--keep", "0.5", "--out", UNWRITABLE]),
    ("export", ["{ckpt}", "--out", UNWRITABLE]),
    ("sweep", ["{ckpt}", "--keep", "0.5", "--out", UNWRITABLE]),
]


def _unwritable() -> bool:
    try:
        with tempfile.NamedTemporaryFile(dir=os.path.dirname(UNWRITABLE)):
            return False
    except OSError:
        return True


@pytest.fixture
def place(tmp_path, damaged):
    """Fill a flag template's placeholders, creating what they name."""
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "model.ort").write_bytes(b"ort")
    ckpt = damaged(lambda payload: None)  # the valid checkpoint
    onnx = tmp_path / "model.onnx"

    def fill(arg: str, index: int) -> str:
        if arg.startswith("{recipe:"):
            recipe = tmp_path / f"recipe{index}.toml"
            recipe.write_text(arg[len("{recipe:"):-1] + "\n")
            return str(recipe)
        return arg.format(ckpt=ckpt, file=tmp_path / "a-file", dir=tmp_path / "a-dir", tmp=tmp_path, onnx=onnx)

    return lambda argv: [fill(a, i) for i, a in enumerate(argv)]


WITH_DEVICE = ("train", "stats", "prune", "eval", "sweep")  # the commands that take --device


@pytest.mark.parametrize("command,argv,message", FLAGS, ids=[f"{c} {' '.join(a)}" for c, a, _ in FLAGS])
def test_bad_flag_is_refused_before_any_work(command, argv, message, place, onnx_file, refused):
    onnx_file()  # a valid model for bench and eval
    line = refused([command, *place(argv), *(RUN if command in WITH_DEVICE and "--device" not in argv else [])])
    assert message in line


@pytest.mark.skipif(not _unwritable(), reason="no unwritable folder on this machine")
@pytest.mark.parametrize("command,argv", READ_ONLY, ids=[c for c, _ in READ_ONLY])
def test_an_unwritable_output_location_is_found_before_the_work(command, argv, place, refused):
    assert "not writable" in refused([command, *place(argv), *(RUN if command in WITH_DEVICE else [])])


@pytest.mark.parametrize("command,argv", [("prune", ["{ckpt}", "--keep", "0.5"]), ("export", ["{ckpt}"]),
                                          ("stats", ["{ckpt}"]), ("sweep", ["{ckpt}", "--keep", "0.5"])])
def test_a_full_disk_is_found_before_the_work(command, argv, place, refused, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    assert "MiB free" in refused([command, *place(argv), *(RUN if command in WITH_DEVICE else [])])


# Inputs that are symbolic link loops: one line in every command alike (Path.resolve raised a traceback for --init).
LOOPS = [("train", ["--init", "{loop}", "--out", "{tmp}/out"]), ("train", ["--resume", "{loop}"]),
         ("eval", ["{loop}"]), ("eval", ["{loop}.onnx"]), ("stats", ["{loop}"]), ("prune", ["{loop}", "--keep", "0.5"]),
         ("export", ["{loop}"]), ("sweep", ["{loop}", "--keep", "0.5"]), ("bench", ["{loop}.onnx"])]


@pytest.mark.parametrize("command,argv", LOOPS, ids=[f"{c} {' '.join(a)}" for c, a in LOOPS])
def test_a_symbolic_link_loop_is_one_line_in_every_command(command, argv, tmp_path, refused):
    for suffix in ("", ".onnx"):
        os.symlink(tmp_path / f"loop-b{suffix}", tmp_path / f"loop-a{suffix}")
        os.symlink(tmp_path / f"loop-a{suffix}", tmp_path / f"loop-b{suffix}")
    filled = [a.format(loop=tmp_path / "loop-a", tmp=tmp_path) for a in argv]
    line = refused([command, *filled, *(RUN if command in WITH_DEVICE else [])])
    assert "is a symbolic link loop" in line


@pytest.mark.parametrize("dropped", [("model", "lr"), ("survival",), ("seed",)])
def test_resuming_a_saved_config_with_keys_missing_is_refused_naming_them(dropped, tmp_path, refused):
    """A run killed in its first epoch restarts from config.json; one missing a key restarted with its default
    (no model: a resnet32) and a word of nothing."""
    import json

    from sdprune.train.config import TrainConfig

    run = tmp_path / "run"
    run.mkdir()
    saved = TrainConfig(model="resnet20", epochs=1, lr=0.05, survival="uniform", seed=3).to_dict()
    (run / "config.json").write_text(json.dumps({k: v for k, v in saved.items() if k not in dropped}))
    line = refused(["train", "--resume", run, *RUN])
    assert f"lacks {', '.join(dropped)}" in line


# NaN loss at step 1, before the first checkpoint
DIVERGES = ["--model", "resnet20", "--lr", "1e30", "--epochs", "1", "--quiet", *RUN]


def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path, refused):
    """No config.json, lock file, run folder or runs-index line: there is nothing to resume."""
    assert "training diverged" in refused(["train", *DIVERGES])  # runs/<name> under tmp_path
    (tmp_path / "mine").mkdir()
    assert "training diverged" in refused(["train", *DIVERGES, "--out", tmp_path / "mine"])  # the folder stays


def test_a_failed_restart_keeps_the_config_of_the_run_it_restarted(tmp_path):
    """A folder holding a run killed in its first epoch (only config.json) is the user's: a restart that
    fails leaves it as it was."""
    from sdprune.errors import SdpruneError
    from sdprune.train.config import TrainConfig
    from sdprune.train.loop import train

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}\n")
    with pytest.raises(SdpruneError, match="training diverged"):
        train(TrainConfig(model="resnet20", lr=1e30, epochs=1, device="cpu", out=str(run)))
    assert (run / "config.json").is_file() and not (run / "checkpoint.pt").exists()


@pytest.mark.parametrize("command,argv", [("prune", ["{ckpt}", "--keep", "0.5"]), ("export", ["{ckpt}"])])
def test_an_output_folder_another_command_is_writing_is_refused_at_once(command, argv, place, tmp_path, refused):
    """Two prunes (or exports) into one --out: both exited 0 and the last won. The second is refused."""
    from sdprune.train.lock import locked_run

    out = tmp_path / "out"
    with locked_run(out, "sdprune command", keep_file=False):  # held as another process holds it
        line = refused([command, *place(argv), "--out", out, *(RUN if command in WITH_DEVICE else [])])
    assert f"{out} is being written by another sdprune command (pid {os.getpid()})" in line
    assert not out.exists()  # the holder's folder went with it: it wrote nothing


def test_a_prune_leaves_no_lock_file_behind(place, tmp_path, monkeypatch, capsys):
    """Its folder holds what it wrote (an export's: tests/deploy/test_export.py)."""
    from sdprune.cli import main

    monkeypatch.chdir(tmp_path)
    ckpt = place(["{ckpt}"])[0]
    assert main(["prune", ckpt, "--keep", "0.5", "--heal", "none", "--out", str(tmp_path / "p"), "-q", *RUN]) == 0
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["checkpoint.pt", "summary.json"]
