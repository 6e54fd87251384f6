"""`sdprune train --data-mode stream`: an image folder decoded by DataLoader workers, end to
end; an interrupted run resumes exactly, whatever the workers; unreadable files fail in one
line or are skipped with a warning; eval and stats read the streamed folder."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sdprune.cli import main
from sdprune.train.checkpoint import load_checkpoint
from sdprune.train.config import TrainConfig
from sdprune.train.loop import train

CLASSES = ("ant", "bee", "cat")
SETTINGS = dict(dataset="imagefolder", data_mode="stream", image_size=16, model="resnet20", epochs=2,
                batch_size=16, seed=3, device="cpu")
TIMING = {"time_s", "images_per_s"}


def flags(settings: dict) -> list[str]:
    return [a for k, v in settings.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def make_folder(root, n_train=20, n_test=4):
    """ROOT/train and ROOT/test, CLASSES x n images of several shapes (PNG and JPEG), one
    brightness and one dominant channel per class (learnable in a few steps)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for c, cls in enumerate(CLASSES):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                h, w = int(rng.integers(18, 32)), int(rng.integers(18, 32))
                pixels = rng.integers(0, 90, (h, w, 3))
                pixels[..., c] += 140
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / cls / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def metrics(run) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def full_run(folder, tmp_path_factory):
    """Two uninterrupted epochs through the command line, streamed."""
    run = tmp_path_factory.mktemp("full") / "run"
    assert main(["train", *flags(SETTINGS), "--data-dir", str(folder), "--out", str(run), "--quiet"]) == 0
    return run


def test_train_streams_an_image_folder(full_run, folder):
    ckpt = load_checkpoint(full_run)
    meta = ckpt["meta"]
    assert meta["epoch"] == 2 and meta["step"] == 2 * 3  # 54 training images: 3 full batches of 16
    assert meta["data"]["dataset"] == "imagefolder" and meta["data"]["classes"] == list(CLASSES)
    assert meta["data"]["input_shape"] == [3, 16, 16] and meta["model"]["in_channels"] == 3
    config = meta["config"]
    assert (config["data_mode"], config["data_dir"], config["image_size"]) == ("stream", str(folder), 16)
    assert (meta["data"]["mode"], meta["data"]["resize"]) == ("stream", 18)  # 16 / 0.875, recorded
    rows = metrics(full_run)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["train_loss"]) for r in rows)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]  # it learns from the streamed batches


def test_an_interrupted_streamed_run_resumes_exactly_with_other_workers(full_run, folder, tmp_path,
                                                                         interrupt_after, same_training_state):
    run = tmp_path / "cut"
    config = TrainConfig(data_dir=str(folder), out=str(run), **SETTINGS)
    with pytest.raises(KeyboardInterrupt):
        train(config, interrupt_after(1))
    assert load_checkpoint(run)["meta"]["epoch"] == 1
    # Which process decodes an image never changes a pixel: two workers on resume, none before.
    train(TrainConfig(device="cpu", workers=2), resume=run)
    a, b = load_checkpoint(full_run), load_checkpoint(run)
    same_training_state(a, b)
    assert metrics(full_run) == metrics(run)


def test_eval_and_stats_read_the_streamed_folder(full_run, tmp_path, capsys):
    final = metrics(full_run)[-1]
    capsys.readouterr()
    assert main(["eval", str(full_run), "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dataset"] == "imagefolder" and result["images"] == {"test": 12, "val": 6}
    assert result["test"]["acc"] == pytest.approx(final["test_acc"])
    assert result["test"]["loss"] == pytest.approx(final["test_loss"], rel=1e-5)
    assert result["val"]["acc"] == pytest.approx(final["val_acc"])
    out = tmp_path / "stats.json"
    assert main(["stats", str(full_run), "--device", "cpu", "--images", "4", "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["images"] == 4 and len(doc["blocks"]) == 9 and out.is_file()


def spoiled_folder(root):
    """A small folder with random bytes named .jpg and a truncated PNG among its training files."""
    root = make_folder(root, n_train=8, n_test=2)
    corrupt = root / "train" / "ant" / "corrupt.jpg"
    corrupt.write_bytes(np.random.default_rng(1).integers(0, 256, 600, dtype=np.uint8).tobytes())
    good = (root / "train" / "bee" / "1.png").read_bytes()
    truncated = root / "train" / "bee" / "truncated.png"
    truncated.write_bytes(good[:len(good) // 2])
    return root, [str(corrupt), str(truncated)]


def test_an_unreadable_file_fails_a_streamed_run_in_one_line(tmp_path, capsys):
    root, bad = spoiled_folder(tmp_path / "images")
    capsys.readouterr()
    code = main(["train", *flags({**SETTINGS, "epochs": 1, "workers": 2}), "--data-dir", str(root),
                 "--out", str(tmp_path / "run"), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("sdprune train: error: "), err
    assert any(f"{path} is not a readable image" in err for path in bad), err
    assert "--bad-images skip" in err and "Traceback" not in err


def test_skip_mode_trains_on_the_rest_and_warns(tmp_path, capsys):
    from sdprune.data.bundle import load_data

    root, bad = spoiled_folder(tmp_path / "images")
    broken_test = root / "test" / "cat" / "broken.png"
    broken_test.write_bytes(b"not a png")
    data = load_data("imagefolder", str(root), image_size=16, data_mode="stream", bad_images="skip")
    in_train = [p for p in bad if p in data.train.paths]
    assert in_train  # the validation slice is seeded: at least one of them is a training file
    capsys.readouterr()
    run = tmp_path / "run"
    # one batch of every training file (26 > 16: a batch of 16 would leave files unread)
    assert main(["train", *flags({**SETTINGS, "epochs": 2, "batch_size": 32}), "--bad-images", "skip",
                 "--data-dir", str(root), "--out", str(run), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count(f"warning: skipped {len(in_train)} unreadable training images (first: ") == 1, err  # once
    assert "trained on the next readable file in their place" in err
    assert any(f"(first: {p})" in err for p in in_train), err
    assert f"warning: skipped 1 unreadable test images (first: {broken_test}), left out" in err, err
    ckpt = load_checkpoint(run)
    assert ckpt["meta"]["config"]["bad_images"] == "skip" and ckpt["meta"]["step"] == 2
    # the run's own policy holds for the commands that read its data again
    assert main(["eval", str(run), "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"]["test"] == len(data.test) - 1
    assert result["test"]["acc"] == pytest.approx(ckpt["meta"]["metrics"]["test_acc"])
