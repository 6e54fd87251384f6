"""The training loop: stochastic depth that really skips compute, resumable exactly.

Determinism contract (CPU): the data order of epoch e comes from a generator seeded by
(seed, e), every augmentation draw and every gate of step s from generators seeded by
(seed, s). A run resumed from its epoch-e checkpoint therefore sees the same batches,
crops and gates as an uninterrupted one and ends with the same weights.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdprune import __version__
from sdprune.checkpoint import load_checkpoint, save_checkpoint, write_json
from sdprune.config import TrainConfig
from sdprune.data import DataBundle, augment, iterate_batches, load_data, normalize, num_batches
from sdprune.errors import SdpruneError
from sdprune.evaluate import evaluate, resolve_device
from sdprune.gates import GateSampler, get_survival, set_survival, step_seed, survival_schedule
from sdprune.layers import gated_blocks
from sdprune.nets import create_model, model_info
from sdprune.report import Reporter
from sdprune.runs import CHECKPOINT, new_run_dir

AUGMENT_STREAM, ORDER_STREAM = 0x5EED_A116, 0x5EED_0D3E  # independent seeds per purpose


def lr_at(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate at an optimisation step (schedules are functions of the step)."""
    epoch = step / steps_per_epoch
    if config.warmup_epochs > 0 and epoch < config.warmup_epochs:
        return config.lr * (epoch + 1 / steps_per_epoch) / config.warmup_epochs
    if config.lr_schedule == "cosine":
        return 0.5 * config.lr * (1 + math.cos(math.pi * min(1.0, epoch / config.epochs)))
    milestones = config.lr_milestones
    if milestones is None:
        milestones = (int(round(0.5 * config.epochs)), int(round(0.75 * config.epochs)))
    return config.lr * 0.1 ** sum(epoch >= m for m in milestones)


def checkpoint_meta(config: TrainConfig, data: DataBundle, model: nn.Module, **state: Any) -> dict:
    """Everything needed to rebuild the model and know what it is, JSON-able."""
    c, h, w = data.input_shape
    return {
        "sdprune_version": __version__,
        "kind": "train",
        "model": {"name": config.model, "num_classes": len(data.classes), "in_channels": c, "kwargs": {}},
        "data": data.meta(),
        "blocks": [name for name, _ in gated_blocks(model)],
        "removed": [],
        "survival": get_survival(model),
        "config": config.to_dict(),
        **state,
    }


@dataclass
class StepResult:
    loss: float      # mean loss of the batch
    correct: int     # top-1 hits in the batch
    executed: float  # branches computed this step
    lr: float


@dataclass
class Trainer:
    """One configured training: model, optimizer, gates and (learned) survival.

    ``step`` is exactly one optimisation step of `sdprune train`; the B1 benchmark times
    this same method, so what it measures is what users run.
    """
    config: TrainConfig
    data: DataBundle
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    sampler: GateSampler
    controller: Any = None          # LearnedSurvival for --survival learned
    steps_per_epoch: int = 1
    gen_aug: torch.Generator = field(default_factory=torch.Generator)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs

    def step(self, step: int, images: Tensor, labels: Tensor) -> StepResult:
        config, device = self.config, self.device
        lr = lr_at(config, step, self.steps_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.gen_aug.manual_seed(step_seed(config.seed ^ AUGMENT_STREAM, step))
        images = augment(images, self.data.augment, self.gen_aug)
        x = normalize(images.to(device, non_blocking=True), self.data.mean, self.data.std)
        y = labels.to(device, non_blocking=True)
        if device.type == "cuda" and config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        gates = self.sampler.apply(step, len(y), device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp and device.type == "cuda"):
            logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        loss_value = float(loss.detach())  # one sync per step: needed for divergence and learning
        if not math.isfinite(loss_value):
            raise SdpruneError(f"training diverged at step {step} (loss {loss_value}); lower --lr")
        if self.controller is not None:
            changed = self.controller.observe(step, gates, loss_value, step / self.total_steps, self.total_steps)
            if changed is not None:
                self.sampler.refresh(changed)
        # Row mode computes every branch (the mask only zeroes rows): all blocks run.
        executed = float(len(self.sampler.blocks)) if self.sampler.mode == "row" else float(gates.sum())
        return StepResult(loss_value, int((logits.argmax(1) == y).sum()), executed, lr)


def build_training(config: TrainConfig, data: DataBundle, device: torch.device,
                   steps_per_epoch: int | None = None) -> Trainer:
    """Model (with its initial survival), optimizer, gate sampler and survival controller."""
    torch.manual_seed(config.seed)  # weight initialisation
    c, _, _ = data.input_shape
    model = create_model(config.model, num_classes=len(data.classes), in_channels=c)
    set_survival(model, survival_schedule(config.survival, len(gated_blocks(model)), config.p_last))
    model.to(device)
    if device.type == "cuda" and config.channels_last:
        model.to(memory_format=torch.channels_last)
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.dim() <= 1 else decay).append(p)
    # Weight decay on conv/linear weights only (BN and biases are not decayed).
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    controller = None
    if config.survival == "learned":
        from sdprune.survival import LearnedSurvival
        controller = LearnedSurvival(model, config, data.input_shape)
    sampler = GateSampler(model, config.drop_mode, config.seed)  # after the controller set survival
    if steps_per_epoch is None:
        steps_per_epoch = num_batches(len(data.train), config.batch_size, drop_last=_drop_last(config, data))
    return Trainer(config, data, device, model, optimizer, sampler, controller, steps_per_epoch)


def _drop_last(config: TrainConfig, data: DataBundle) -> bool:
    return len(data.train) > config.batch_size  # a ragged last batch only when it is the only one


def train(config: TrainConfig, reporter: Reporter | None = None, resume: str | Path | None = None) -> dict:
    """Train a network as configured (or resume a run); returns the run summary."""
    reporter = reporter or Reporter(quiet=True)
    ckpt = load_checkpoint(resume) if resume is not None else None
    if ckpt is not None:
        if ckpt["meta"].get("kind") != "train" or "optimizer" not in ckpt:
            raise SdpruneError(f"{ckpt['path']} is not a resumable training checkpoint")
        saved = TrainConfig.from_dict(ckpt["meta"]["config"])
        config = TrainConfig.from_dict({**saved.to_dict(), "device": config.device, "workers": config.workers})
    model_info(config.model)  # an unknown model fails before a large dataset is read
    device = resolve_device(config.device)
    data = load_data(config.dataset, config.data_dir, config.download, config.image_size,
                     workers=config.workers)
    trainer = build_training(config, data, device)
    model, optimizer, sampler, controller = trainer.model, trainer.optimizer, trainer.sampler, trainer.controller
    run_dir = Path(ckpt["path"]).parent if ckpt else Path(config.out) if config.out else \
        new_run_dir(config.model, config.dataset, config.survival)
    start_epoch, step = 0, 0
    if ckpt is not None:
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if controller is not None:
            controller.load_state_dict(ckpt.get("controller", {}))
        start_epoch, step = ckpt["meta"]["epoch"], ckpt["meta"]["step"]
    sampler.refresh()  # survival came from the controller or the resumed weights
    if (run_dir / CHECKPOINT).exists() and ckpt is None:
        raise SdpruneError(f"{run_dir} already holds a run; use --resume {run_dir} or another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", config.to_dict())
    metrics_path = run_dir / "metrics.jsonl"
    history = _read_metrics(metrics_path, start_epoch)

    steps_per_epoch, drop_last = trainer.steps_per_epoch, _drop_last(config, data)
    blocks = len(sampler.blocks)
    reporter.info(f"training {config.model} ({blocks} gated blocks) on {config.dataset} "
                  f"[{len(data.train)} train / {len(data.val)} val / {len(data.test)} test], "
                  f"survival {config.survival}, {config.drop_mode} mode, device {device}, run {run_dir}")
    gen_order = torch.Generator()
    t_run = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        model.train()
        gen_order.manual_seed(step_seed(config.seed ^ ORDER_STREAM, epoch))
        t0, seen, loss_sum, correct, executed = time.perf_counter(), 0, 0.0, 0, 0.0
        with reporter.progress(f"epoch {epoch + 1}/{config.epochs}", steps_per_epoch) as bar:
            for images, labels in iterate_batches(data.train, config.batch_size, gen_order, drop_last):
                result = trainer.step(step, images, labels)
                lr = result.lr
                n = len(labels)
                seen += n
                loss_sum += result.loss * n
                correct += result.correct
                executed += result.executed
                step += 1
                bar.update(1, f"loss {loss_sum / seen:.3f} acc {100 * correct / seen:.1f}% "
                              f"{seen / (time.perf_counter() - t0):.0f} img/s "
                              f"blocks {executed / max(1, step - epoch * steps_per_epoch):.1f}/{blocks}")
        sampler.clear()
        train_time = time.perf_counter() - t0
        val = evaluate(model, data.val, data.mean, data.std, device, config.eval_batch_size)
        test = evaluate(model, data.test, data.mean, data.std, device, config.eval_batch_size)
        steps_done = max(1, step - epoch * steps_per_epoch)
        row = {"epoch": epoch + 1, "step": step, "lr": lr, "train_loss": loss_sum / max(1, seen),
               "train_acc": 100.0 * correct / max(1, seen), "val_loss": val["loss"], "val_acc": val["acc"],
               "test_loss": test["loss"], "test_acc": test["acc"], "time_s": train_time,
               "images_per_s": seen / train_time, "executed_blocks": executed / steps_done,
               "survival": get_survival(model)}
        if controller is not None:
            row["importance"] = controller.summary()["importance"]
        history.append(row)
        extra = {"controller": controller.state_dict()} if controller is not None else {}
        save_checkpoint(run_dir / CHECKPOINT, model,
                        checkpoint_meta(config, data, model, epoch=epoch + 1, step=step, metrics=_public(row)),
                        optimizer=optimizer.state_dict(), **extra)
        _write_metrics(metrics_path, history)
        reporter.info(f"epoch {epoch + 1}/{config.epochs}  loss {row['train_loss']:.4f}  train {row['train_acc']:.2f}%  "
                      f"val {val['acc']:.2f}%  test {test['acc']:.2f}%  {train_time:.1f}s  "
                      f"{row['images_per_s']:.0f} img/s  blocks {row['executed_blocks']:.1f}/{blocks}")
    final = history[-1] if history else {}
    if controller is not None:
        names = [n for n, _ in gated_blocks(model)]
        reporter.bars("learned survival per block", names, get_survival(model))
    return {"run": str(run_dir), "checkpoint": str(run_dir / CHECKPOINT), "model": config.model,
            "dataset": config.dataset, "survival": config.survival, "epochs": config.epochs,
            "blocks": blocks, "device": str(device), "wall_s": time.perf_counter() - t_run,
            "final": _public(final)}


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("survival", "importance")}


def _read_metrics(path: Path, upto_epoch: int) -> list[dict]:
    """Metrics of the epochs a resumed run keeps (later lines belong to lost work)."""
    if upto_epoch == 0 or not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["epoch"] <= upto_epoch]


def _write_metrics(path: Path, rows: list[dict]) -> None:
    from sdprune.checkpoint import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    atomic_write(path, write)
