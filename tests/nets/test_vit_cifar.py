"""vit_cifar (benchmark B7's transformer): torchvision's ViT at CIFAR's scale, its own
stochastic depth as prior survival, a plain twin, and `sdprune train` on an image folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.vision_transformer import VisionTransformer

from sdprune.cli import main
from sdprune.depth.schedule import get_survival, survival_schedule
from sdprune.depth.structure import block_names
from sdprune.errors import SdpruneError
from sdprune.nets import create_model, from_gated
from sdprune.nets.tv_vit import CIFAR_VIT
from sdprune.train.checkpoint import build_model, load_checkpoint


def test_vit_cifar_is_torchvisions_vit_with_linear_priors_and_a_plain_twin():
    torch.manual_seed(0)
    model = create_model("vit_cifar", 10).eval()
    assert len(block_names(model)) == 12 and block_names(model)[:2] == [
        "encoder.layers.encoder_layer_0.attn", "encoder.layers.encoder_layer_0.mlp"]
    survival = get_survival(model)
    assert survival == pytest.approx(survival_schedule("linear", 12, 0.9)) and survival[-1] == pytest.approx(0.9)
    assert get_survival(create_model("vit_cifar", 10, stochastic_depth_prob=0.0)) == [1.0] * 12
    # eval computes survival * branch: back in torchvision's form (survival folded), the same logits
    theirs = VisionTransformer(num_classes=10, **CIFAR_VIT).eval()
    theirs.load_state_dict(from_gated(model.state_dict(), "tv_vit_b_16", **CIFAR_VIT))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), theirs(x), atol=1e-5, rtol=0)
    with pytest.raises(SdpruneError, match="stochastic_depth_prob"):
        create_model("vit_cifar", 10, stochastic_depth_prob=1.0)


def image_folder(root, side: int = 32) -> str:
    """Two classes of random JPEGs, 8 train and 4 test images each, as the CIFAR folders hold."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        for c, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 100, (side, side, 3)) + 120 * c
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / cls / f"{i}.jpg")
    return str(root)


def test_sdprune_train_trains_vit_cifar_on_an_image_folder(tmp_path, capsys, monkeypatch):
    from sdprune.train import loop

    real, built = loop.build_training, []

    def spy(*args, **kwargs):  # keeps the run's initial weights, as its trainer starts from them
        trainer = real(*args, **kwargs)
        built.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
        return trainer
    monkeypatch.setattr(loop, "build_training", spy)
    folder = image_folder(tmp_path / "cifar")
    run = tmp_path / "run"
    # the plain twin: --survival none replaces the linear priors vit_cifar is built with
    # (test_convnext_cifar.py trains B7's other arm, the own rate: --p-last 0.9)
    assert main(["train", "--model", "vit_cifar", "--dataset", "imagefolder", "--data-dir", folder,
                 "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--lr", "0.01", "--device", "cpu",
                 "--out", str(run), "--json", "--survival", "none"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == "vit_cifar" and summary["final"]["step"] >= 1
    ckpt = load_checkpoint(run / "checkpoint.pt", finite=True)
    model = build_model(ckpt)
    assert get_survival(model) == [1.0] * 12
    # trained: its weights moved from the ones this run started from
    (start,) = built
    assert start.keys() == model.state_dict().keys()
    assert any(not torch.equal(v, start[k]) for k, v in model.state_dict().items() if not k.endswith(".survival"))
    # another size than the one it is built for: one line, not torchvision's assertion
    assert main(["train", "--model", "vit_cifar", "--dataset", "imagefolder", "--data-dir", folder,
                 "--image-size", "40", "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "r2")]) == 2
    assert "vit_cifar does not take 40x40 images" in capsys.readouterr().err
