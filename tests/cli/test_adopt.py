"""`sdprune adopt`: weights someone else trained become a run, and every command works on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from sdprune.cli import main
from sdprune.nets import create_model
from sdprune.nets.convert import from_gated
from sdprune.train.adopt import IMAGENET_MEAN, IMAGENET_STD
from sdprune.train.checkpoint import build_model, load_checkpoint

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SIZE = 8


@pytest.fixture(scope="module")
def cifar_like(tmp_path_factory):
    """A CIFAR-10-shaped JPEG folder (ten classes, tiny images), and a ResNet-20 saved as the
    public CIFAR files are: {"best_prec1", "state_dict"}, "module." keys, no BN counters."""
    from PIL import Image

    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 3)):
        for c, cls in enumerate(CLASSES):
            (root / "data" / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(25 * c + rng.integers(0, 40, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / "data" / split / cls / f"{i}.jpg")
    torch.manual_seed(0)
    gated = create_model("resnet20", 10)
    with torch.no_grad():
        for m in gated.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    state = {f"module.{k}": v for k, v in from_gated(gated.state_dict(), "resnet20").items()
             if not k.endswith("num_batches_tracked")}
    torch.save({"best_prec1": 91.7, "state_dict": state}, root / "resnet20-0.th")
    return root


def adopt_args(root, *extra) -> list[str]:
    return ["adopt", str(root / "resnet20-0.th"), "--dataset", "imagefolder", "--data-dir", str(root / "data"),
            "--image-size", str(SIZE), "--device", "cpu", *extra]


def test_adopt_binds_the_weights_to_the_data_with_no_training(cifar_like, tmp_path, capsys):
    run = tmp_path / "have"
    assert main([*adopt_args(cifar_like, "--out", str(run), "--json")]) == 0
    summary = json.loads(capsys.readouterr().out)
    ckpt = load_checkpoint(run)
    meta = ckpt["meta"]
    assert (meta["model"]["name"], meta["epoch"], meta["config"]["epochs"]) == ("resnet20", 0, 0)
    assert meta["init"]["kind"] == "cifar-resnet" and meta["config"]["survival"] == "none"
    assert (meta["data"]["mean"], meta["data"]["std"]) == (IMAGENET_MEAN, IMAGENET_STD)  # assumed, recorded
    assert meta["survival"] == [1.0] * 9 and "optimizer" not in ckpt  # exactly the published function
    assert summary["test_acc"] == meta["metrics"]["test_acc"]
    # the weights are the file's, reordered: back in its layout they are the very same tensors
    saved = torch.load(cifar_like / "resnet20-0.th", weights_only=True)["state_dict"]
    back = from_gated(build_model(ckpt).state_dict(), "resnet20")
    assert all(torch.equal(back[k[len("module."):]], v) for k, v in saved.items())
    assert main(["eval", str(run), "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["test"]["acc"] == pytest.approx(summary["test_acc"])


def test_every_command_works_on_an_adopted_run(cifar_like, tmp_path, capsys):
    run = tmp_path / "have"
    assert main([*adopt_args(cifar_like, "--out", str(run), "--quiet")]) == 0
    assert main(["stats", str(run), "--device", "cpu", "--quiet"]) == 0
    assert (run / "stats.json").is_file()
    assert main(["prune", str(run), "--keep", "0.5", "--device", "cpu", "--out", str(tmp_path / "small"),
                 "--quiet"]) == 0
    pruned = load_checkpoint(tmp_path / "small")["meta"]
    assert len(pruned["removed"]) == 4 and pruned["model"]["name"] == "resnet20"
    assert main(["export", str(tmp_path / "small"), "--out", str(tmp_path / "onnx"), "--quiet"]) == 0
    assert (tmp_path / "onnx" / "model.onnx").is_file()
    # a retrofit from the adopted run goes on with the data it was bound to, unasked
    assert main(["train", "--init", str(run), "--epochs", "1", "--batch-size", "32", "--device", "cpu",
                 "--out", str(tmp_path / "tuned"), "--json"]) == 0
    tuned = json.loads(capsys.readouterr().out)
    assert tuned["dataset"] == "imagefolder" and tuned["model"] == "resnet20"
    assert load_checkpoint(tmp_path / "tuned")["meta"]["data"]["mean"] == IMAGENET_MEAN


def test_mean_and_std_override_the_assumed_normalisation(cifar_like, tmp_path):
    run = tmp_path / "have"
    assert main([*adopt_args(cifar_like, "--out", str(run), "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25",
                             "--quiet")]) == 0
    data = load_checkpoint(run)["meta"]["data"]
    assert (data["mean"], data["std"]) == ([0.5] * 3, [0.25] * 3)


def test_other_classes_get_a_new_head(cifar_like, tmp_path, capsys):
    three = tmp_path / "three"
    for split in ("train", "test"):
        for cls in CLASSES[:3]:
            (three / split).mkdir(parents=True, exist_ok=True)
            (three / split / cls).symlink_to(cifar_like / "data" / split / cls)
    assert main(["adopt", str(cifar_like / "resnet20-0.th"), "--dataset", "imagefolder", "--data-dir", str(three),
                 "--image-size", str(SIZE), "--device", "cpu", "--out", str(tmp_path / "have")]) == 0
    assert "a new, untrained classifier" in capsys.readouterr().err
    meta = load_checkpoint(tmp_path / "have")["meta"]
    assert meta["model"]["num_classes"] == 3 and meta["init"]["new_head"]


@pytest.mark.parametrize("case", ["not-a-file", "bad-weights", "taken", "wrong-model", "epochs-0", "mean-alone",
                                  "mean-channels"])
def test_a_refused_adoption_is_one_line_and_writes_nothing(case, cifar_like, tmp_path, refused):
    taken = tmp_path / "taken"
    if case == "taken":
        assert main([*adopt_args(cifar_like, "--out", str(taken), "--quiet")]) == 0
    bad = tmp_path / "bad.th"
    bad.write_bytes(b"not a torch file")
    argv = {"not-a-file": ["adopt", str(tmp_path / "missing.th")],
            "bad-weights": ["adopt", str(bad)],
            "taken": adopt_args(cifar_like, "--out", str(taken)),
            "wrong-model": adopt_args(cifar_like, "--model", "resnet56"),
            "epochs-0": ["train", "--init", str(cifar_like / "resnet20-0.th"), "--epochs", "0"],
            "mean-alone": adopt_args(cifar_like, "--mean", "0.5,0.5,0.5"),
            "mean-channels": adopt_args(cifar_like, "--mean", "0.5", "--std", "0.2")}[case]
    message = refused(argv)
    expected = {"not-a-file": "missing.th not found", "bad-weights": "not a weights file", "taken": "already holds a run",
                "wrong-model": "resnet20", "epochs-0": "sdprune adopt", "mean-alone": "go together",
                "mean-channels": "channel"}[case]
    assert expected in message
