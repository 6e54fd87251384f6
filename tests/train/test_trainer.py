"""The training loop: exact resume, self-describing checkpoints, metrics, drop modes."""

from __future__ import annotations

import json

import pytest
import torch

from sdprune.data.bundle import data_for_checkpoint, load_data
from sdprune.depth.schedule import survival_schedule
from sdprune.errors import SdpruneError
from sdprune.train.checkpoint import build_model, load_checkpoint
from sdprune.train.config import TrainConfig
from sdprune.train.evaluate import evaluate
from sdprune.train.loop import train
from sdprune.train.trainer import build_training, lr_at

FAST = dict(model="resnet20", dataset="digits", batch_size=128, device="cpu")
TIMING = {"time_s", "images_per_s", "wall_s"}
FIELDS = {"epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
          "test_acc", "time_s", "images_per_s", "executed_blocks", "survival"}



def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def untimed(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMING}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """Two uninterrupted epochs (linear survival, batch mode) shared by several tests."""
    out = tmp_path_factory.mktemp("full") / "run"
    summary = train(TrainConfig(epochs=2, out=str(out), **FAST))
    return out, summary


def test_resume_continues_exactly(full_run, tmp_path, interrupt_after, same_training_state):
    full, full_summary = full_run
    run = tmp_path / "run"
    config = TrainConfig(epochs=2, out=str(run), **FAST)
    with pytest.raises(KeyboardInterrupt):
        train(config, interrupt_after(1))
    assert load_checkpoint(run)["meta"]["epoch"] == 1 and len(metrics(run)) == 1
    resumed = train(TrainConfig(), resume=run)  # the run's own config, not this one, applies
    a, b = load_checkpoint(full), load_checkpoint(run)
    same_training_state(a, b)
    assert [untimed(r) for r in metrics(full)] == [untimed(r) for r in metrics(run)]
    assert untimed(resumed["final"]) == untimed(full_summary["final"])
    assert a["meta"]["step"] == b["meta"]["step"] == 20
    # Only the device (and workers) may change on resume; the saved config says what ran.
    assert json.loads((run / "config.json").read_text()) == {**config.to_dict(), "device": "auto"}


def test_checkpoint_is_safe_and_rebuilds_the_model(full_run):
    run, summary = full_run
    raw = torch.load(run / "checkpoint.pt", weights_only=True)
    assert raw["format"] == "sdprune-checkpoint"
    meta = raw["meta"]
    assert meta["kind"] == "train" and meta["epoch"] == 2 and meta["removed"] == []
    assert meta["model"] == {"name": "resnet20", "num_classes": 10, "in_channels": 1, "kwargs": {}}
    assert meta["data"]["input_shape"] == [1, 8, 8] and len(meta["data"]["classes"]) == 10
    assert len(meta["blocks"]) == 9 and meta["blocks"][0] == "stages.0.0"
    assert meta["survival"] == pytest.approx(survival_schedule("linear", 9, 0.5))
    assert TrainConfig.from_dict(meta["config"]) == TrainConfig(epochs=2, out=str(run), **FAST)
    json.dumps(meta)
    model = build_model(load_checkpoint(run))
    assert not model.training
    data = data_for_checkpoint(meta)
    result = evaluate(model, data.test, data.mean, data.std)
    assert result["acc"] == pytest.approx(summary["final"]["test_acc"])
    assert result["loss"] == pytest.approx(summary["final"]["test_loss"], rel=1e-5)


def test_metrics_have_one_line_per_epoch_with_the_documented_fields(full_run):
    run, summary = full_run
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2] and [r["step"] for r in rows] == [10, 20]
    for r in rows:
        assert FIELDS <= set(r)
        assert 0 <= r["train_acc"] <= 100 and 0 <= r["val_acc"] <= 100 and r["time_s"] > 0
        assert 0 < r["executed_blocks"] < 9  # stochastic depth ran fewer blocks than 9
        assert len(r["survival"]) == 9
    assert rows[0]["lr"] == pytest.approx(0.1) and rows[1]["lr"] == pytest.approx(0.01)
    assert summary["final"] == {k: v for k, v in rows[-1].items() if k in summary["final"]}
    assert summary["blocks"] == 9 and summary["checkpoint"] == str(run / "checkpoint.pt")


@pytest.mark.parametrize("survival,mode", [("none", "batch"), ("linear", "row"), ("uniform", "batch")])
def test_other_schedules_and_row_mode_train(tmp_path, survival, mode):
    config = TrainConfig(epochs=1, survival=survival, drop_mode=mode, p_last=0.8,
                         out=str(tmp_path / "run"), **FAST)
    summary = train(config)
    row = metrics(tmp_path / "run")[0]
    assert summary["final"]["train_loss"] == pytest.approx(row["train_loss"])
    assert torch.isfinite(torch.tensor(row["train_loss"]))
    if survival == "none":
        assert row["executed_blocks"] == 9.0 and row["survival"] == [1.0] * 9
    elif mode == "row":  # a per-sample mask still computes every branch
        assert row["executed_blocks"] == 9.0 and row["survival"] != [1.0] * 9
    else:
        assert 0 < row["executed_blocks"] < 9
    meta = load_checkpoint(tmp_path / "run")["meta"]
    assert meta["config"]["drop_mode"] == mode and meta["config"]["survival"] == survival



class Recorder:
    """Stands in for the survival controller and keeps what each step handed it."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def observe(self, step, gates, loss, total_steps):
        self.calls.append((gates, loss))  # and changes no survival


def test_row_mode_hands_per_sample_losses_to_learned_survival():
    """Row mode: each sample is its own experiment, so the controller gets each sample's loss."""
    data = load_data("digits")
    trainer = build_training(TrainConfig(survival="learned", drop_mode="row", **FAST), data, torch.device("cpu"))
    trainer.controller = recorder = Recorder()
    images, labels = data.train.images[:32], data.train.labels[:32]
    result = trainer.step(0, images, labels)
    (gates, loss), = recorder.calls
    assert gates.shape == (9, 32)
    assert isinstance(loss, torch.Tensor) and loss.shape == (32,) and loss.device.type == "cpu"
    assert not loss.requires_grad and bool((loss > 0).all()) and float(loss.std()) > 0
    assert float(loss.mean()) == pytest.approx(result.loss, rel=1e-6)  # the mean is what was trained on

    batch = build_training(TrainConfig(survival="learned", **FAST), data, torch.device("cpu"))
    batch.controller = recorder = Recorder()
    result = batch.step(0, images, labels)
    (gates, loss), = recorder.calls
    assert gates.shape == (9,) and loss == result.loss  # batch mode: one experiment, the mean loss


def test_learned_survival_in_row_mode_trains(tmp_path):
    summary = train(TrainConfig(epochs=1, survival="learned", drop_mode="row", out=str(tmp_path / "run"), **FAST))
    ckpt = load_checkpoint(tmp_path / "run")
    importance = ckpt["controller"]["importance"]
    assert bool(torch.isfinite(importance).all()) and float(importance.abs().sum()) > 0  # it learned something
    assert ckpt["meta"]["survival"] != pytest.approx(ckpt["meta"]["survival"][:1] * 9)
    assert 0 <= summary["final"]["test_acc"] <= 100 and metrics(tmp_path / "run")[0]["executed_blocks"] == 9.0


def test_a_run_folder_is_never_overwritten(full_run, monkeypatch):
    import sdprune.train.loop as loop

    run, _ = full_run
    before = (run / "checkpoint.pt").read_bytes()

    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the run folder was checked")

    monkeypatch.setattr(loop, "load_data", no_data)
    with pytest.raises(SdpruneError, match="already holds a run"):
        train(TrainConfig(epochs=1, out=str(run), **FAST))
    assert (run / "checkpoint.pt").read_bytes() == before


def test_learned_training_resumes_exactly(tmp_path, monkeypatch):
    """Interrupt a learned run after epoch 1, resume it: same survival, controller state, weights."""
    import sdprune.train.loop as loop

    config = dict(model="resnet20", survival="learned", target_keep=0.5, epochs=2, batch_size=128)
    train(TrainConfig(**config, out=str(tmp_path / "full")))

    write_metrics = loop.write_metrics

    def crash_after_first_epoch(path, rows):
        write_metrics(path, rows)
        raise KeyboardInterrupt  # as if the machine went away after epoch 1's checkpoint

    monkeypatch.setattr(loop, "write_metrics", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**config, out=str(tmp_path / "cut")))
    monkeypatch.setattr(loop, "write_metrics", write_metrics)
    assert load_checkpoint(tmp_path / "cut")["meta"]["epoch"] == 1
    train(TrainConfig(), resume=tmp_path / "cut")

    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "cut")
    assert a["meta"]["survival"] == b["meta"]["survival"]
    for key in ("current", "importance", "xtx", "xty"):
        assert torch.equal(a["controller"][key], b["controller"][key]), key
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key


def test_a_target_keep_below_one_block_per_stage_fails_before_training():
    data = load_data("digits")
    config = TrainConfig(survival="learned", target_keep=0.2, **FAST)  # resnet20: 3 stages, keeps 2 blocks
    with pytest.raises(SdpruneError, match=r"--target-keep 0.2 keeps 2 blocks; .* at least 3 \(one per stage\)"):
        build_training(config, data, torch.device("cpu"))


def test_momentum_zero_is_plain_sgd():
    data = load_data("digits")
    trainer = build_training(TrainConfig(momentum=0.0, **FAST), data, torch.device("cpu"))  # Nesterov on by default
    assert all(g["momentum"] == 0.0 and not g["nesterov"] for g in trainer.optimizer.param_groups)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.step(0, data.train.images[:32], data.train.labels[:32])
    assert torch.isfinite(torch.tensor(result.loss)) and 0 <= result.correct <= 32
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    decayed, plain = trainer.optimizer.param_groups
    assert decayed["weight_decay"] == 1e-4 and plain["weight_decay"] == 0.0
    assert all(p.dim() > 1 for p in decayed["params"]) and all(p.dim() <= 1 for p in plain["params"])


def test_adamw_resumes_exactly(tmp_path, interrupt_after, same_training_state):
    data = load_data("digits")
    trainer = build_training(TrainConfig(optimizer="adamw", weight_decay=0.05, lr=1e-3, **FAST), data,
                             torch.device("cpu"))
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [0.05, 0.0]
    # the optimizer's moments are part of the checkpoint: an interrupted AdamW run resumes exactly
    config = dict(optimizer="adamw", weight_decay=0.05, lr=1e-3, epochs=2, **FAST)
    train(TrainConfig(**config, out=str(tmp_path / "full")))
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**config, out=str(tmp_path / "cut")), interrupt_after(1))
    train(TrainConfig(), resume=tmp_path / "cut")
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "cut")
    same_training_state(a, b)
    assert "exp_avg_sq" in a["optimizer"]["state"][0]
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["optimizer"] == "adamw"


@pytest.mark.parametrize("model,spared", [("convnext_cifar", "layer_scale"), ("vit_cifar", "class_token"),
                                          ("vit_cifar", "pos_embedding")])
def test_adamw_spares_what_its_recipes_spare_and_sgd_decays_as_the_paper(model, spared):
    from sdprune.nets.registry import create_model
    from sdprune.train.trainer import NO_DECAY_NAMES, build_optimizer

    net = create_model(model, num_classes=1)  # a one-output head is still a matrix: decayed
    name_of = {id(p): n for n, p in net.named_parameters()}
    for optimizer in ("sgd", "adamw"):
        decayed, plain = build_optimizer(net, TrainConfig(model=model, optimizer=optimizer)).param_groups
        decayed_names = {name_of[id(p)] for p in decayed["params"]}
        plain_names = {name_of[id(p)] for p in plain["params"]}
        assert decayed_names and decayed_names.isdisjoint(plain_names)
        assert decayed_names | plain_names == set(name_of.values())
        assert all(net.get_parameter(n).dim() <= 1 for n in plain_names if not any(s in n for s in NO_DECAY_NAMES))
        assert any(n.startswith("heads") or n.startswith("classifier") for n in decayed_names)  # the head
        assert any(net.get_parameter(n).dim() == 4 or "in_proj" in n for n in decayed_names)  # kernels
        shaped = {n for n in name_of.values() if spared in n}
        assert shaped and all(net.get_parameter(n).dim() > 1 for n in shaped)
        # SGD's rule is the one every earlier run trained (and resumes) with: dimension only
        assert shaped <= (plain_names if optimizer == "adamw" else decayed_names)


def test_building_a_training_leaves_the_callers_random_state_alone():
    data = load_data("digits")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build_training(TrainConfig(seed=5, **FAST), data, torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected)
    b = build_training(TrainConfig(seed=5, **FAST), data, torch.device("cpu"))
    c = build_training(TrainConfig(seed=6, **FAST), data, torch.device("cpu"))
    first = next(a.model.parameters())
    assert torch.equal(first, next(b.model.parameters()))  # the weights are the seed's
    assert not torch.equal(first, next(c.model.parameters()))


def test_resume_rejects_a_file_that_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SdpruneError, match="not a readable sdprune checkpoint"):
        train(TrainConfig(), resume=bad)


def test_step_schedule_divides_by_ten_at_half_and_three_quarters():
    c = TrainConfig(epochs=8, lr=0.4)
    assert [lr_at(c, e * 10, 10) for e in (0, 3, 4, 5, 6, 7)] == pytest.approx([0.4, 0.4, 0.04, 0.04, 0.004, 0.004])
    paper = TrainConfig(epochs=500, lr_milestones=(250, 375))
    assert lr_at(paper, 249 * 391 + 390, 391) == pytest.approx(0.1)
    assert lr_at(paper, 250 * 391, 391) == pytest.approx(0.01)
    assert lr_at(paper, 375 * 391, 391) == pytest.approx(0.001)
    cosine = TrainConfig(epochs=4, lr_schedule="cosine")
    assert lr_at(cosine, 0, 10) == pytest.approx(0.1) and lr_at(cosine, 20, 10) == pytest.approx(0.05)
