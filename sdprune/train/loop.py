"""`sdprune train`'s loop: epochs of Trainer.step, evaluation, checkpoints and metrics.

Determinism contract (CPU): the data order of epoch e comes from a generator seeded by
(seed, e), every augmentation draw and every gate of step s from generators seeded by
(seed, s), and a streamed folder's crop of the image at position p of epoch e from
(seed, e, p). A run resumed from its epoch-e checkpoint therefore sees the same batches,
crops and gates as an uninterrupted one and ends with the same weights; under torchrun
every rank draws the gates of the whole batch and takes its rows of it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from sdprune.choices import MEMORY_BUDGET
from sdprune.data.bundle import DataBundle, check_classes, load_data
from sdprune.data.folder import FolderSet
from sdprune.data.images import ImageSet, drops_last, iterate_batches, shard_rows
from sdprune.depth.gates import step_seed
from sdprune.depth.schedule import get_survival
from sdprune.depth.structure import gated_blocks
from sdprune.errors import Interrupted, SdpruneError
from sdprune.files import check_output, input_path
from sdprune.nets.registry import model_info
from sdprune.report import Reporter
from sdprune import faults
from sdprune.train.adopt import Adopted, adopt
from sdprune.train.checkpoint import load_checkpoint, save_checkpoint, write_json
from sdprune.files import remove_stale_temps
from sdprune.train.config import TrainConfig, distill_weight
from sdprune.train.evaluate import evaluate, resolve_device
from sdprune.train.lock import locked_run
from sdprune.train.runs import (CHECKPOINT, CONFIG, new_run_dir, read_metrics, record_run, resume_command,
                                saved_config, write_metrics)
from sdprune.train.schema import check_resumable, load_training_state
from sdprune.train.distributed import (Distributed, broadcast_buffers, broadcast_text,
                                       check_agreement, distributed_session, machine_first)
from sdprune.train.skipped import count_skipped, report_skipped
from sdprune.train.trainer import CROP_STREAM, ORDER_STREAM, build_training, checkpoint_meta


# Scores the blocks of a trained network (higher = more needed) for keeping a fraction of them,
# by a criterion (None: the default): a prune-aware retrofit's step-0 ranking. Injected by the
# caller (the CLI passes the pruning pipeline's selection), so training does not depend on the
# pruning layer above it.
RankBlocks = Callable[[nn.Module, DataBundle, torch.device, float, str | None], Sequence[float]]


def train(config: TrainConfig, reporter: Reporter | None = None, resume: str | Path | None = None,
          rank_blocks: RankBlocks | None = None) -> dict:
    """Train a network as configured (or resume a run); returns the run summary.

    With ``config.init`` the run is a retrofit of that trained network (``sdprune.train.adopt``);
    ``rank_blocks`` then ranks its blocks at step 0 when the run is learned and prune-aware.

    ``resume`` is a checkpoint, or a run folder interrupted before its first checkpoint
    (it starts over from the folder's config.json). The run folder is locked while the
    run writes it; Ctrl-C raises ``Interrupted``, whose message says how to resume.

    Launched by torchrun, every process calls this: they train one network together
    (``sdprune.train.distributed``; ``config.grad_sync`` picks how gradients are averaged) and
    only rank 0 writes or reports.
    """
    with distributed_session(config.device) as (world, device_name):
        if not world.main:
            reporter = Reporter(silent=True)
        return _train(config, reporter or Reporter(quiet=True), resume, rank_blocks, world,
                      resolve_device(device_name))


def _train(config: TrainConfig, reporter: Reporter, resume: str | Path | None, rank_blocks: RankBlocks | None,
           world: Distributed, device: torch.device) -> dict:
    ckpt, run_dir = None, None
    if resume is not None and Path(resume).is_dir() and not (Path(resume) / CHECKPOINT).exists():
        run_dir, config = Path(resume), saved_config(Path(resume) / CONFIG, config)
    elif resume is not None:
        ckpt = load_checkpoint(resume)
        check_resumable(ckpt)
        config = TrainConfig.from_dict({**ckpt["meta"]["config"], "device": config.device, "workers": config.workers,
                                        "world_size": 1})
    config = dataclasses.replace(config, world_size=world.world_size)  # validated: the batch must split
    if config.model is not None:  # None: the architecture of --init, known once it is read
        model_info(config.model)  # an unknown model fails before a large dataset is read
    if run_dir is None and ckpt is None and not config.out:  # a new folder, named once by rank 0
        named = new_run_dir(config.model or "retrofit", config.dataset, config.survival) if world.main else None
        run_dir = Path(broadcast_text(str(named) if named else None, world, device) or "")
    run_dir = run_dir or (Path(ckpt["path"]).parent if ckpt else Path(config.out))
    if config.init is not None:  # before any data is read
        input_path(config.init, "--init")
    if world.main:
        check_output(run_dir, folder=True, what="run folder")  # a clear word before the lock tries to create it
    with locked_run(run_dir) if world.main else nullcontext():
        return _train_locked(config, reporter, ckpt, run_dir, device, resumed=resume is not None,
                             rank_blocks=rank_blocks, world=world)


def _train_locked(config: TrainConfig, reporter: Reporter, ckpt: dict | None, run_dir: Path,
                  device: torch.device, resumed: bool, rank_blocks: RankBlocks | None = None,
                  world: Distributed = Distributed()) -> dict:
    """``train`` once the run folder is locked: nothing else writes it now (only rank 0 writes)."""
    if (run_dir / CHECKPOINT).exists() and ckpt is None:
        raise SdpruneError(f"{run_dir} already holds a run; continue it with "
                           f"`{resume_command(run_dir)}` or use another --out")
    if (run_dir / CONFIG).exists() and ckpt is None and not resumed:
        reporter.warn(f"{run_dir} holds a run interrupted before its first checkpoint; starting it over")
    if world.main:
        remove_stale_temps(run_dir)
    recorded = ckpt["meta"]["data"] if ckpt is not None else {}  # a resumed run reads its data as it did
    data = open_data(config, device, recorded, world)
    if ckpt is not None:
        check_classes(data, recorded)  # a folder that gained a class since the run started cannot continue it
    if world.enabled and len(data.train) < config.batch_size:
        raise SdpruneError(f"{world.world_size} processes need at least one full batch of {config.batch_size} "
                           f"images; the training set has {len(data.train)}")
    adopted, ranking = None, None
    if config.init is not None:
        adopted = adopt(config.init, config.model, len(data.classes), data.input_shape[0], config.seed)
        config = dataclasses.replace(config, model=adopted.model_name)
        if config.mean is None and not recorded:  # --mean/--std, or a resume's recorded view, win
            data = adopted_normalization(data, adopted, reporter)
        if adopted.source.get("new_head") and distill_weight(config) > 0:
            if config.distill is not None:
                raise SdpruneError("--distill needs the initial network's classes; --init has another head")
            config = dataclasses.replace(config, distill=0.0)
            reporter.warn("the data has other classes than --init: a new classifier, no distillation")
        started = (ckpt or {}).get("meta", {}).get("init", {}).get("sha256")
        if started is not None and started != adopted.source["sha256"]:
            raise SdpruneError(f"--init {config.init} is not the file this run started from (sha256 differs); "
                               "a resumed retrofit needs its teacher unchanged")
        if ckpt is None and config.survival == "learned" and config.target_keep is not None:
            if rank_blocks is None:
                raise ValueError("a prune-aware retrofit needs rank_blocks "
                                 "(sdprune.prune.retrofit.rank_for_retrofit, as `sdprune train` passes)")
            # ranked once, on rank 0, and sent to every rank: ranks ranking apart could differ
            # (GPU nondeterminism) and would then train with different survivals
            ranking = (list(rank_blocks(adopted.model, data, device, config.target_keep, config.criterion))
                       if world.main else None)
            if world.enabled:
                ranking = json.loads(broadcast_text(json.dumps(ranking) if world.main else None, world, device))
    trainer = build_training(config, data, device, adopted=adopted, ranking=ranking, world=world)
    data = _resident(data, device, reporter)
    model, optimizer, sampler, controller = trainer.model, trainer.optimizer, trainer.sampler, trainer.controller
    start_epoch, step = 0, 0
    if ckpt is not None:
        load_training_state(ckpt, model, optimizer, controller)
        start_epoch, step = ckpt["meta"]["epoch"], ckpt["meta"]["step"]
    sampler.refresh()  # survival came from the controller or the resumed weights
    fresh = world.main and not (run_dir / CONFIG).exists()  # a new run: nothing of it on disk yet
    if world.main:  # first, so that a run killed in its first epoch can start over from it
        write_json(run_dir / CONFIG, config.to_dict())
    metrics_path = run_dir / "metrics.jsonl"
    # The checkpoint carries every epoch's metrics: a run killed between writing its
    # checkpoint and its metrics line gets the line back here.
    history = list(ckpt["history"]) if ckpt is not None and isinstance(ckpt.get("history"), list) \
        else read_metrics(metrics_path, start_epoch)
    if ckpt is not None and world.main:
        write_metrics(metrics_path, history)
    try:
        return _epochs(config, reporter, trainer, data, run_dir, device, history, start_epoch, step, adopted)
    except KeyboardInterrupt:
        raise Interrupted(f"resume with `{resume_command(run_dir)}`") from None
    except Exception:
        if fresh and not (run_dir / CHECKPOINT).exists():  # a new run that failed (diverged ...) before
            (run_dir / CONFIG).unlink(missing_ok=True)     # its first checkpoint leaves nothing to resume:
        raise                                              # no trace (the lock takes its file and folder)


def open_data(config: TrainConfig, device: torch.device, recorded: dict | None = None,
              world: Distributed = Distributed()) -> DataBundle:
    """The data a run trains on, as ``config`` names it; a resumed run's as its checkpoint
    ``recorded`` it (the same view, normalisation and channels)."""
    recorded = recorded or {}
    # auto decodes into memory within MEMORY_BUDGET for the machine, where every process holds a
    # copy; rank 0's machine sets it for all, so every rank makes the same choice
    processes = int(broadcast_text(str(world.local_world_size), world, device) or 1)
    normalization = (recorded["mean"], recorded["std"]) if recorded else \
        (list(config.mean), list(config.std)) if config.mean is not None and config.std is not None else None
    with machine_first(world) if config.download else nullcontext():  # one download per machine
        data = load_data(config.dataset, config.data_dir, config.download, config.image_size,
                         workers=config.workers, data_mode=recorded.get("mode", config.data_mode),
                         bad_images=config.bad_images, eval_resize=recorded.get("resize", config.eval_resize),
                         pin_memory=device.type == "cuda", memory_budget=MEMORY_BUDGET // processes,
                         normalization=normalization, channels=recorded["input_shape"][0] if recorded else None)
    if normalization is not None and len(normalization[0]) != data.input_shape[0]:
        raise SdpruneError(f"--mean/--std give {len(normalization[0])} values; the images have "
                           f"{data.input_shape[0]} channel(s)")
    return data


def _epochs(config: TrainConfig, reporter: Reporter, trainer, data, run_dir: Path, device: torch.device,
            history: list[dict], start_epoch: int, step: int, adopted: Adopted | None = None) -> dict:
    """Epochs ``start_epoch``..``config.epochs - 1``, each ending in a checkpoint and a metrics line."""
    model, optimizer, sampler, controller = trainer.model, trainer.optimizer, trainer.sampler, trainer.controller
    world = trainer.world
    metrics_path = run_dir / "metrics.jsonl"
    steps_per_epoch, drop_last = trainer.steps_per_epoch, drops_last(len(data.train), config.batch_size)
    total = min(config.batch_size, len(data.train))  # every training batch is full (drop_last) or the whole set
    part = (shard_rows(total, world.shard).start, total)
    blocks = len(sampler.blocks)
    streamed = "streamed" if isinstance(data.train, FolderSet) else "in memory"
    reporter.info(f"training {config.model} ({blocks} gated blocks) on {config.dataset} "
                  f"[{len(data.train)} train / {len(data.val)} val / {len(data.test)} test, {streamed}], "
                  f"survival {config.survival}, {config.drop_mode} mode, device {device}"
                  f"{f' x {world.world_size} processes' if world.enabled else ''}, run {run_dir}")
    if data.skipped:
        reporter.warn(f"skipped {len(data.skipped)} unreadable images while loading (first: {data.skipped[0]})")
    gen_order = torch.Generator()
    t_run = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        model.train()
        gen_order.manual_seed(step_seed(config.seed ^ ORDER_STREAM, epoch))
        t0, seen, loss_sum, correct, executed = time.perf_counter(), 0, 0.0, 0, 0.0
        skipped = count_skipped(data)
        batches = iterate_batches(data.train, config.batch_size, gen_order, drop_last,
                                  crop_seed=step_seed(config.seed ^ CROP_STREAM, epoch), shard=world.shard)
        with reporter.progress(f"epoch {epoch + 1}/{config.epochs}", steps_per_epoch) as bar:
            for images, labels in batches:
                result = trainer.step(step, images, labels, part if world.enabled else None)
                lr = result.lr
                n = result.images
                seen += n
                loss_sum += result.loss * n
                correct += result.correct
                executed += result.executed
                step += 1
                bar.update(1, f"loss {loss_sum / seen:.3f} acc {100 * correct / seen:.1f}% "
                              f"{seen / (time.perf_counter() - t0):.0f} img/s "
                              f"blocks {executed / max(1, step - epoch * steps_per_epoch):.1f}/{blocks}")
        train_time = time.perf_counter() - t0
        if world.enabled:  # the ranks must hold one network; then every rank evaluates (and rank 0
            check_agreement(world, {"survival": float(sum(get_survival(model))),  # saves) rank 0's
                                    "gates drawn": trainer.gate_checksum,        # BatchNorm statistics
                                    "weights": float(sum(p.detach().double().sum() for p in model.parameters()))},
                            device)
            broadcast_buffers(model)
        val = evaluate(model, data.val, data.mean, data.std, device, config.eval_batch_size, world)
        test = evaluate(model, data.test, data.mean, data.std, device, config.eval_batch_size, world)
        report_skipped(data, skipped, world, device, reporter)
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
        if world.main:
            extra = {"controller": controller.state_dict()} if controller is not None else {}
            save_checkpoint(run_dir / CHECKPOINT, model,
                            checkpoint_meta(config, data, model, adopted, epoch=epoch + 1, step=step,
                                            metrics=_public(row)),
                            optimizer=optimizer.state_dict(), history=history, **extra)
            if epoch == start_epoch:  # listed once it holds a checkpoint: a run that failed first is no run
                record_run(run_dir, "train")
            faults.reached("epoch-saved")
            write_metrics(metrics_path, history)
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
            "blocks": blocks, "device": str(device), "world_size": world.world_size,
            "wall_s": time.perf_counter() - t_run, "final": _public(final)}


# An in-memory training set moves to the GPU when it takes at most this fraction of the free
# device memory (CIFAR-10: 150 MB): a step then costs the host no indexing and no copy.
RESIDENT_FRACTION = 0.25


def _resident(data: DataBundle, device: torch.device, reporter: Reporter) -> DataBundle:
    """``data`` with its in-memory training images on ``device`` when they fit (CUDA only)."""
    if device.type != "cuda" or not isinstance(data.train, ImageSet):
        return data
    free, _ = torch.cuda.mem_get_info(device)
    if data.train.images.nbytes > RESIDENT_FRACTION * free:
        return data
    reporter.info(f"training images held on {device} ({data.train.images.nbytes / 2**20:.0f} MiB)")
    return dataclasses.replace(data, train=data.train.to(device))


def adopted_normalization(data: DataBundle, adopted: Adopted, reporter: Reporter) -> DataBundle:
    """The data normalised as the adopted weights were trained (their function is kept exactly)."""
    if adopted.mean is None or len(adopted.mean) != len(data.mean):
        return data
    if (adopted.mean, adopted.std) != (data.mean, data.std):
        reporter.info(f"normalising as --init was trained: mean {adopted.mean}, std {adopted.std}")
    return dataclasses.replace(data, mean=list(adopted.mean), std=list(adopted.std))


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("survival", "importance")}
