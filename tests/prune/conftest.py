"""Shared set-up of the pruning tests: a trained run, and healing data no network should be calibrated on."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from sdprune.data.bundle import data_for_checkpoint
from sdprune.train.checkpoint import build_model, load_checkpoint
from sdprune.train.config import TrainConfig
from sdprune.train.loop import train


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A resnet20 trained 3 epochs on digits (tests may add pruned folders to it, never change its checkpoint)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    train(TrainConfig(model="resnet20", epochs=3, out=str(out)))
    return out


@pytest.fixture(scope="module")
def run(trained_run):
    """The trained run, by the name the pruning tests use."""
    return trained_run


@pytest.fixture
def own_run(trained_run, tmp_path):
    """A copy of the trained run that a test may write into (or break, were the code wrong)."""
    copy = tmp_path / "run"
    copy.mkdir()
    shutil.copy2(trained_run / "checkpoint.pt", copy / "checkpoint.pt")
    return copy


@pytest.fixture(scope="module")
def trained(trained_run):
    """That run's network and data (copy the network before changing it)."""
    ckpt = load_checkpoint(trained_run)
    return build_model(ckpt), data_for_checkpoint(ckpt["meta"])


def _zeros_only(bundle):
    """The same bundle whose training images (what healing uses) are all 0s; val and test untouched.

    Re-estimating BatchNorm statistics on them honestly damages a network that fits its
    data: the case in which healing must keep the trained statistics.
    """
    biased = copy.copy(bundle)
    biased.train = bundle.train.subset(torch.nonzero(bundle.train.labels == 0).flatten())
    return biased


@pytest.fixture
def zeros_only():
    """``bundle -> bundle`` with unrepresentative training images (every one a 0)."""
    return _zeros_only


@pytest.fixture
def heal_on_zeros(monkeypatch):
    """Make a module's ``data_for_checkpoint`` hand out zeros-only training images."""

    def patch(module) -> None:
        original = module.data_for_checkpoint
        monkeypatch.setattr(module, "data_for_checkpoint", lambda *a, **k: _zeros_only(original(*a, **k)))
    return patch
