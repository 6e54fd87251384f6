"""One optimisation step of stochastic-depth training, and everything it is built from.

``Trainer.step`` draws its augmentation and its gates from generators seeded by
(seed, step), so a step is a function of the step number (the determinism contract of
``sdprune.train.loop``); ``build_training`` makes the model, optimizer, gate sampler and
learned-survival controller from a ``TrainConfig``.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from sdprune import __version__
from sdprune.data.augment import augment
from sdprune.data.bundle import DataBundle
from sdprune.data.images import drops_last, normalization, normalize, num_batches
from sdprune.depth.gates import GateSampler, step_seed
from sdprune.depth.learned import LearnedSurvival
from sdprune.depth.schedule import get_survival, set_survival, survival_schedule
from sdprune.depth.structure import all_block_names, check_norm_batch, gated_blocks
from sdprune.errors import SdpruneError
from sdprune.nets.registry import create_model
from sdprune.train.adopt import Adopted
from sdprune.train.config import TrainConfig, distill_weight
from sdprune.train.distill import distillation_loss
from sdprune.train.distributed import (Distributed, average_gradients, gather_rows, resolve_grad_sync,
                                       sum_across, wrap_model)

AUGMENT_STREAM, ORDER_STREAM, CROP_STREAM = 0x5EED_A116, 0x5EED_0D3E, 0x5EED_C409  # independent seeds per purpose


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


def checkpoint_meta(config: TrainConfig, data: DataBundle, model: nn.Module, adopted: Adopted | None = None,
                    **state: Any) -> dict:
    """Everything needed to rebuild the model and know what it is, JSON-able."""
    c, h, w = data.input_shape
    removed = list(adopted.removed) if adopted is not None else []
    kwargs = dict(adopted.kwargs) if adopted is not None else {}
    if adopted is not None:
        state = {"init": adopted.source, **state}
    return {
        "sdprune_version": __version__,
        "kind": "train",
        "model": {"name": config.model, "num_classes": len(data.classes), "in_channels": c, "kwargs": kwargs},
        "data": data.meta(),
        "blocks": all_block_names(model),  # the architecture's, in forward order (removed ones too)
        "removed": removed,
        "survival": get_survival(model),
        "config": config.to_dict(),
        **state,
    }


@dataclass
class StepResult:
    loss: float      # mean loss of the batch (across every rank's part of it)
    correct: int     # top-1 hits in the batch (every rank's)
    executed: float  # branches computed this step
    lr: float
    images: int = 0  # images in the batch (every rank's)


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
    controller: LearnedSurvival | None = None  # for --survival learned
    steps_per_epoch: int = 1
    teacher: nn.Module | None = None  # retrofit: the adopted network, frozen, in eval mode
    distill: float = 0.0              # weight of the distillation loss (0: labels only)
    gen_aug: torch.Generator = field(default_factory=torch.Generator)
    world: Distributed = field(default_factory=Distributed)  # this rank under torchrun
    forward_model: nn.Module | None = None  # what the step runs: the model, or its DDP wrapper
    grad_sync: str = "allreduce"  # resolved (sdprune.train.distributed.resolve_grad_sync)
    gate_checksum: float = 0.0  # of every gate drawn: ranks compare it (distributed.check_agreement)
    # The normalisation on the device, built once: building it per step is a blocking copy.
    mean_std: tuple[Tensor, Tensor] = field(init=False)

    def __post_init__(self) -> None:
        self.mean_std = normalization(self.data.mean, self.data.std, self.device)
        if self.forward_model is None:
            self.forward_model = self.model

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs

    def step(self, step: int, images: Tensor, labels: Tensor, part: tuple[int, int] | None = None) -> StepResult:
        """Optimisation step ``step`` on one batch of uint8 images and their labels (on the CPU,
        or already on the device when the training set is held there).

        Sets the step's learning rate, moves the batch to the device, augments it there,
        draws and installs the gates, runs forward, backward and the optimizer step, and feeds learned
        survival. ``part`` = (offset, total): under torchrun these are rows offset.. of a
        batch of ``total`` split across ranks; they get the crops and row gates those rows
        get on one process. Raises ``SdpruneError`` if the loss is not finite.
        """
        config, device, world = self.config, self.device, self.world
        lr = lr_at(config, step, self.steps_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        offset, total = part if part is not None else (0, len(labels))
        self.gen_aug.manual_seed(step_seed(config.seed ^ AUGMENT_STREAM, step))
        images = augment(images.to(device, non_blocking=True), self.data.augment, self.gen_aug, (offset, total))
        x = normalize(images, *self.mean_std)
        y = labels.to(device, non_blocking=True)
        if device.type == "cuda" and config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # Row mode: every sample had its own mask, so learned survival needs every sample's loss.
        per_sample = self.controller is not None and self.sampler.mode == "row"
        with self.sampler.install(step, total, rows=slice(offset, offset + len(y))) as gates, \
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp and device.type == "cuda"):
            logits = self.forward_model(x)
            teacher_logits = None
            if self.teacher is not None and self.distill > 0:
                with torch.no_grad():
                    teacher_logits = self.teacher(x).float()
            losses = distillation_loss(logits.float(), teacher_logits, y, self.distill, config.distill_temperature,
                                       config.label_smoothing, reduction="none" if per_sample else "mean")
            loss = losses.mean() if per_sample else losses
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # DDP on a 1-channel stem conv: its gradient's strides are ambiguous (C=1), harmless
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            loss.backward()
        if self.grad_sync == "allreduce":
            average_gradients(self.model, world)
        self.optimizer.step()
        # The step's one read-back from the device (a sync): the loss (per sample in row mode)
        # and the top-1 count in a single transfer, for the divergence check, learning, metrics.
        # Under torchrun the ranks pool them first (one all-reduce of loss and counts; in row
        # mode a gather of the per-sample losses too), so every rank learns from the whole batch.
        correct = (logits.detach().argmax(1) == y).sum().float().view(1)
        counts = torch.cat([correct, torch.full((1,), float(len(y)), device=device)])
        if per_sample:
            observed, counts = gather_rows(losses.detach().float().view(-1), world), sum_across(counts, world)
        else:  # the mean loss travels with the counts: one all-reduce a step
            pooled = sum_across(torch.cat([losses.detach().float().view(1), counts]), world)
            observed, counts = pooled[:1] / world.world_size, pooled[1:]
        back = torch.cat([observed, counts]).cpu()
        observed, correct_value, seen = back[:-2], int(back[-2]), int(back[-1])
        loss_value = float(observed.mean()) if per_sample else float(observed[0])
        if not math.isfinite(loss_value):
            raise SdpruneError(f"training diverged at step {step} (loss {loss_value}); lower --lr")
        if self.controller is not None:
            changed = self.controller.observe(step, gates, observed if per_sample else loss_value, self.total_steps)
            if changed is not None:
                self.sampler.refresh(changed)
        self.gate_checksum += float(gates.sum()) * ((step % 1000) + 1)
        # Row mode computes every branch (the mask only zeroes rows): all blocks run.
        executed = float(len(self.sampler.blocks)) if self.sampler.mode == "row" else float(gates.sum())
        return StepResult(loss_value, correct_value, executed, lr, seen)


# AdamW recipes (timm's ``no_weight_decay``, torchvision's ``--transformer-embedding-decay 0``)
# leave these undecayed too: decay would pull a layer scale, and the branch it scales, towards
# zero (a block removal that training should decide), and the embeddings towards nothing.
NO_DECAY_NAMES = ("layer_scale", "class_token", "pos_embedding", "relative_position_bias_table", "logit_scale")


def decay_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float,
                 skip: Sequence[str] = ()) -> list[dict]:
    """Parameter groups with weight decay on matrices and kernels only: norms' scales and
    shifts and biases (every tensor of one dimension), and parameters whose name contains one
    of ``skip``, are not decayed."""
    decay, no_decay = [], []
    for name, p in named:
        (no_decay if p.dim() <= 1 or any(s in name for s in skip) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_sgd(model: nn.Module, lr: float, momentum: float, nesterov: bool, weight_decay: float) -> torch.optim.SGD:
    """SGD with weight decay on conv/linear weights only (``decay_groups``), the paper's.

    ``momentum`` 0 is plain SGD: Nesterov needs momentum, so it is then off.
    """
    return torch.optim.SGD(decay_groups(model.named_parameters(), weight_decay), lr=lr, momentum=momentum,
                           nesterov=nesterov and momentum > 0)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The run's optimizer (``config.optimizer``): SGD as ``build_sgd``, or AdamW (decoupled
    weight decay, PyTorch's betas and eps) that also spares ``NO_DECAY_NAMES``, as its recipes
    do; the lr schedule sets the rate."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(decay_groups(model.named_parameters(), config.weight_decay, NO_DECAY_NAMES),
                                 lr=config.lr)
    return build_sgd(model, config.lr, config.momentum, config.nesterov, config.weight_decay)


def build_training(config: TrainConfig, data: DataBundle, device: torch.device,
                   steps_per_epoch: int | None = None, adopted: Adopted | None = None,
                   ranking: Sequence[float] | None = None, world: Distributed | None = None) -> Trainer:
    """Model (with its initial survival), optimizer, gate sampler and survival controller.

    From scratch, the weights are initialised from ``config.seed`` without touching the
    caller's global random state, and ``config.survival``'s schedule replaces any survival the
    builder set (a built-in prior: ``--survival none`` trains a family's plain twin). A retrofit (``adopted``) trains a copy of the adopted
    network, which itself becomes the frozen distillation teacher; a schedule's survivals are
    folded into it so that at step 0 it computes what the adopted network does
    (``set_survival(keep_function=True)``); learned survival starts from its survivals, and
    ``ranking`` (one score per gated block, higher = more needed) fixes the blocks a
    prune-aware retrofit excludes. Under torchrun (``world``)
    the step runs through the model's distributed wrapper (``distributed.wrap_model``).
    """
    world = world or Distributed()
    c, _, _ = data.input_shape
    teacher = None
    if adopted is None:
        with torch.random.fork_rng(devices=[]):  # the model is built on the CPU
            torch.manual_seed(config.seed)
            model = create_model(config.model, num_classes=len(data.classes), in_channels=c)
    else:
        model = copy.deepcopy(adopted.model)
        if distill_weight(config) > 0:
            teacher = adopted.model.eval().requires_grad_(False).to(device)
    _check_batch(config, data, model, world)  # before the run writes anything
    start = get_survival(model) if adopted is not None else None
    # A retrofit keeps the adopted function: the schedule is folded in. A fresh model's builder
    # already folded 1 / prior into each block's output scale (``sdprune.nets.wrap``: ConvNeXt's
    # layer scale, Swin's, EfficientNet's last BatchNorm ...); the schedule replaces the prior
    # without refolding, so training starts from that scale, at most 1 / (1 - drop rate) times
    # torchvision's initial value (a learned parameter: an initialisation, not a function to keep).
    if config.survival != "learned":
        set_survival(model, survival_schedule(config.survival, len(gated_blocks(model)), config.p_last),
                     keep_function=adopted is not None)
    controller = None
    if config.survival == "learned":  # before any move to the device: a bad --target-keep fails cheaply
        controller = LearnedSurvival(model, data.input_shape, p_last=config.p_last,
                                     target_survival=config.target_survival, target_keep=config.target_keep,
                                     p_min=config.p_min, start=start, ranking=ranking,
                                     anneal_end=config.anneal_end)
    model.to(device)
    if device.type == "cuda" and config.channels_last:
        model.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher.to(memory_format=torch.channels_last)
    sampler = GateSampler(model, config.drop_mode, config.seed)  # after the controller set survival
    grad_sync = resolve_grad_sync(config.grad_sync, device)
    may_skip = config.survival != "none" and config.drop_mode == "batch"
    forward_model = wrap_model(model, world, device, config.sync_bn, may_skip, grad_sync)
    optimizer = build_optimizer(model, config)
    if steps_per_epoch is None:
        steps_per_epoch = num_batches(len(data.train), config.batch_size,
                                      drop_last=drops_last(len(data.train), config.batch_size))
    return Trainer(config, data, device, model, optimizer, sampler, controller, steps_per_epoch,
                   teacher=teacher, distill=distill_weight(config) if teacher is not None else 0.0,
                   world=world, forward_model=forward_model, grad_sync=grad_sync)


def _check_batch(config: TrainConfig, data: DataBundle, model: nn.Module, world: Distributed) -> None:
    """Refuse training steps whose rows would leave a BatchNorm one value per channel: every
    step is a full batch (drop_last) or the whole training set, cut into one part per rank
    unless --sync-bn pools them."""
    total = min(config.batch_size, len(data.train))
    rows = total if config.sync_bn else total // world.world_size
    if total < config.batch_size:
        batch = f"a training set of {total} image{'s' if total != 1 else ''}"
    else:
        batch = f"--batch-size {config.batch_size}" + (f" over {world.world_size} processes"
                                                       if world.enabled and not config.sync_bn else "")
    try:
        check_norm_batch(model, data.input_shape, rows, batch)  # the first forward pass
    except AssertionError as e:  # torchvision's ViT asserts the one image size it was built for
        size = "x".join(map(str, data.input_shape[1:]))
        raise SdpruneError(f"{config.model} does not take {size} images ({e}); set --image-size") from None
