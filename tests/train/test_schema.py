"""The one check of a checkpoint: what it accepts, what it refuses and what it only reports."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from sdprune.data.bundle import load_data
from sdprune.depth.schedule import get_survival
from sdprune.depth.structure import block_names, remove_blocks
from sdprune.errors import SdpruneError
from sdprune.report import Reporter
from sdprune.train.checkpoint import build_model, load_checkpoint, save_checkpoint
from sdprune.train.config import TrainConfig, resolve_config
from sdprune.train.schema import check_resumable, load_training_state, non_finite
from sdprune.train.trainer import build_training, checkpoint_meta

FAST = {"model": "resnet20", "dataset": "digits", "batch_size": 128, "device": "cpu"}


@pytest.fixture(scope="module")
def data():
    return load_data("digits")


def training(data, **config):
    return build_training(TrainConfig(**{**FAST, **config}), data, torch.device("cpu"))


def saved(tmp_path, data, trainer, name="run", **meta_changes):
    """A training checkpoint of ``trainer`` as the loop writes it (metadata changed by ``meta_changes``)."""
    meta = {**checkpoint_meta(trainer.config, data, trainer.model, epoch=1, step=12, metrics={}), **meta_changes}
    extra = {"controller": trainer.controller.state_dict()} if trainer.controller is not None else {}
    path = tmp_path / name / "checkpoint.pt"
    save_checkpoint(path, trainer.model, meta, optimizer=trainer.optimizer.state_dict(), **extra)
    return path


def test_a_pruned_checkpoint_loads_and_its_survivals_must_match_its_blocks(tmp_path, data):
    trainer = training(data)
    model = remove_blocks(copy.deepcopy(trainer.model), ["stages.0.1", "stages.2.2"])
    meta = {**checkpoint_meta(trainer.config, data, model, epoch=1, step=12, metrics={}), "kind": "pruned",
            "blocks": block_names(trainer.model),
            "removed": ["stages.0.1", "stages.2.2"]}
    save_checkpoint(tmp_path / "p.pt", model, {**meta, "survival": get_survival(model)})
    assert len(build_model(load_checkpoint(tmp_path / "p.pt")).stages[0]) == 3
    save_checkpoint(tmp_path / "q.pt", model, {**meta, "survival": get_survival(trainer.model)})
    with pytest.raises(SdpruneError, match="meta.survival has 9 values for 7 blocks"):
        load_checkpoint(tmp_path / "q.pt")


def test_non_finite_weights_are_reported_or_refused(tmp_path, data):
    trainer = training(data)
    with torch.no_grad():
        trainer.model.head[2].bias[3] = math.inf
    path = saved(tmp_path, data, trainer)
    warnings = []
    reporter = Reporter(quiet=True)
    reporter.warn = warnings.append
    ckpt = load_checkpoint(path, reporter)  # eval, stats, prune: loaded, with a word of warning
    assert non_finite(ckpt["state_dict"]) == ["head.2.bias"]
    assert warnings == [(f"{path}: NaN or infinite values in head.2.bias: losses and accuracies below are not "
                         "meaningful")]
    with pytest.raises(SdpruneError, match="NaN or infinite values in head.2.bias; its outputs would be garbage"):
        load_checkpoint(path, finite=True)  # export
    with pytest.raises(SdpruneError, match="cannot resume"):
        check_resumable(ckpt)


def test_resume_state_is_checked_against_the_model_it_continues(tmp_path, data):
    trainer = training(data, survival="learned")
    trainer.controller.importance = torch.arange(9.0)
    path = saved(tmp_path, data, trainer)
    fresh = training(data, survival="learned")
    load_training_state(load_checkpoint(path), fresh.model, fresh.optimizer, fresh.controller)
    assert torch.equal(fresh.controller.importance, torch.arange(9.0))  # what fits is loaded

    for damage, message in [(lambda c: c["controller"].update(xtx=torch.zeros(3, 3)), "learned-survival xtx"),
                            (lambda c: c["controller"].update(current=torch.full((9,), math.nan)), "non-finite"),
                            (lambda c: c["controller"].pop("xty"), "learned-survival state does not fit"),
                            (lambda c: c.update(controller=[1, 2]), "must be a dict")]:
        ckpt = load_checkpoint(path)
        damage(ckpt)
        fresh = training(data, survival="learned")
        with pytest.raises(SdpruneError, match=message):
            load_training_state(ckpt, fresh.model, fresh.optimizer, fresh.controller)


def test_config_values_of_the_wrong_type_name_the_key():
    with pytest.raises(SdpruneError, match="config key 'epochs' must be a whole number, got '3'"):
        TrainConfig.from_dict({"epochs": "3"})
    with pytest.raises(SdpruneError, match="config key 'amp' must be true/false, got 1"):
        TrainConfig.from_dict({"amp": 1})
    with pytest.raises(SdpruneError, match="'image_size' must be a whole number or none"):
        TrainConfig.from_dict({"image_size": 3.5})
    # what a recipe or a checkpoint legitimately holds: ints for floats, lists for tuples, None where allowed
    c = TrainConfig.from_dict({"lr": 1, "lr_milestones": [3, 6], "image_size": None, "target_keep": None})
    assert (c.lr, c.lr_milestones) == (1, (3, 6))


def test_a_recipe_is_checked_like_the_flags(tmp_path):
    (tmp_path / "r.toml").write_text('warmup_epochs = nan\n')
    with pytest.raises(SdpruneError, match="--warmup-epochs must be a number >= 0, got nan"):
        resolve_config(str(tmp_path / "r.toml"), {})
    with pytest.raises(SdpruneError, match="cannot read recipe"):
        resolve_config(str(tmp_path), {})
    assert resolve_config(str(tmp_path / "r.toml"), {"warmup_epochs": 0.5}).warmup_epochs == 0.5  # flags win
