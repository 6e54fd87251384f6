"""`sdprune train`'s loop: epochs of Trainer.step, evaluation, checkpoints and metrics.

Determinism contract (CPU): the data order of epoch e comes from a generator seeded by
(seed, e), every augmentation draw and every gate of step s from generators seeded by
(seed, s). A run resumed from its epoch-e checkpoint therefore sees the same batches,
crops and gates as an uninterrupted one and ends with the same weights.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from sdprune.data.bundle import load_data
from sdprune.data.images import drops_last, iterate_batches
from sdprune.depth.gates import step_seed
from sdprune.depth.schedule import get_survival
from sdprune.depth.structure import gated_blocks
from sdprune.errors import SdpruneError
from sdprune.files import check_output
from sdprune.nets.registry import model_info
from sdprune.report import Reporter, json_text
from sdprune.train.checkpoint import atomic_write, load_checkpoint, save_checkpoint, write_json
from sdprune.train.config import TrainConfig
from sdprune.train.evaluate import evaluate, resolve_device
from sdprune.train.runs import CHECKPOINT, new_run_dir
from sdprune.train.schema import check_resumable, load_training_state
from sdprune.train.trainer import ORDER_STREAM, build_training, checkpoint_meta


def train(config: TrainConfig, reporter: Reporter | None = None, resume: str | Path | None = None) -> dict:
    """Train a network as configured (or resume a run); returns the run summary."""
    reporter = reporter or Reporter(quiet=True)
    ckpt = load_checkpoint(resume) if resume is not None else None
    if ckpt is not None:
        check_resumable(ckpt)
        saved = TrainConfig.from_dict(ckpt["meta"]["config"])
        config = TrainConfig.from_dict({**saved.to_dict(), "device": config.device, "workers": config.workers})
    model_info(config.model)  # an unknown model fails before a large dataset is read
    device = resolve_device(config.device)
    run_dir = Path(ckpt["path"]).parent if ckpt else Path(config.out) if config.out else \
        new_run_dir(config.model, config.dataset, config.survival)
    if (run_dir / CHECKPOINT).exists() and ckpt is None:
        raise SdpruneError(f"{run_dir} already holds a run; use --resume {run_dir} or another --out")
    check_output(run_dir, folder=True, what="run folder")
    data = load_data(config.dataset, config.data_dir, config.download, config.image_size,
                     workers=config.workers)
    trainer = build_training(config, data, device)
    model, optimizer, sampler, controller = trainer.model, trainer.optimizer, trainer.sampler, trainer.controller
    start_epoch, step = 0, 0
    if ckpt is not None:
        load_training_state(ckpt, model, optimizer, controller)
        start_epoch, step = ckpt["meta"]["epoch"], ckpt["meta"]["step"]
    sampler.refresh()  # survival came from the controller or the resumed weights
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", config.to_dict())
    metrics_path = run_dir / "metrics.jsonl"
    history = _read_metrics(metrics_path, start_epoch)

    steps_per_epoch, drop_last = trainer.steps_per_epoch, drops_last(len(data.train), config.batch_size)
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
        train_time = time.perf_counter() - t0
        val = evaluate(model, data.val, data.mean, data.std, device, config.eval_batch_size)
        test = evaluate(model, data.test, data.mean, data.std, device, config.eval_batch_size)
        steps_done = max(1, step - epoch * steps_per_epoch)
        row = {"epoch": epoch + 1, "step": step, "lr": lr, "train_loss": loss_sum / max(1, seen),
               "train_acc": 100.0 * correct / max(1, seen), "val_loss": val["loss"], "val_acc": val["acc"],
               "test_loss": test["loss"], "test_acc": test["acc"], "time_s": train_time,
               "images_per_s": seen / train_time, "executed_blocks": executed / steps_done,
               "survival": get_survival(model)}
        if controller is not None:  # what the learned budget really executes, next to what was asked
            learned = controller.summary()
            row.update({k: learned[k] for k in ("importance", "target_survival", "executed_fraction",
                                                 "budget_feasible")})
        history.append(row)
        extra = {"controller": controller.state_dict()} if controller is not None else {}
        save_checkpoint(run_dir / CHECKPOINT, model,
                        checkpoint_meta(config, data, model, epoch=epoch + 1, step=step, metrics=_public(row)),
                        optimizer=optimizer.state_dict(), **extra)
        _write_metrics(metrics_path, history)
        reporter.info(f"epoch {epoch + 1}/{config.epochs}  loss {row['train_loss']:.4f}  "
                      f"train {row['train_acc']:.2f}%  val {val['acc']:.2f}%  test {test['acc']:.2f}%  "
                      f"{train_time:.1f}s  {row['images_per_s']:.0f} img/s  "
                      f"blocks {row['executed_blocks']:.1f}/{blocks}")
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

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.writelines(json_text(r, indent=None) + "\n" for r in rows)
    atomic_write(path, write)
