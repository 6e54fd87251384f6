"""Healing a network after blocks were removed.

Removing a block shifts the activations that every later BatchNorm normalises with its
running statistics, so the first remedy is to re-estimate those statistics on training
images (cheap, no gradient). Re-estimation does not always help (a few unrepresentative
batches, or a network whose trained statistics already fit), so ``heal_bn`` keeps the new
statistics only where they improve the validation slice, never deciding on test. The
second remedy is a short fine-tune, distilled from the unpruned network: the pruned
network learns to reproduce its teacher's outputs.

Both run the gated blocks deterministically (branch scaled by its survival, as in eval)
while BatchNorm is in training mode, so they heal exactly the function that is evaluated
and exported rather than the stochastic training-time one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sdprune.choices import HEAL_MODES
from sdprune.data.augment import augment
from sdprune.data.bundle import DataBundle
from sdprune.data.images import drops_last, iterate_batches, normalization, normalize, num_batches
from sdprune.depth.gates import expected_gates, step_seed
from sdprune.depth.structure import check_norm_batch, norm_values_per_image
from sdprune.errors import SdpruneError
from sdprune.report import Reporter
from sdprune.train.distill import distillation_loss
from sdprune.train.evaluate import assess
from sdprune.train.trainer import build_sgd

DEFAULT_FINETUNE_EPOCHS = 1.0
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class HealSpec:
    """How a pruned network is healed: an optional distilled fine-tune, then BN statistics.

    ``bn``: re-estimate BatchNorm statistics on ``bn_batches`` training batches, kept only
    where they improve the validation slice. ``finetune_epochs`` > 0: fine-tune first
    (distilled from the unpruned network unless ``distill`` is False).
    """

    bn: bool = True
    finetune_epochs: float = 0.0
    distill: bool = True
    bn_batches: int = 20

    def __post_init__(self) -> None:
        if not (self.finetune_epochs >= 0 and math.isfinite(self.finetune_epochs)):  # NaN too
            raise SdpruneError(f"--finetune-epochs must be >= 0 and finite, got {self.finetune_epochs}")
        if self.bn_batches < 1:
            raise SdpruneError(f"BN re-estimation needs at least 1 batch, got {self.bn_batches}")

    @classmethod
    def of(cls, mode: str = "bn", finetune_epochs: float | None = None, distill: bool = True,
           bn_batches: int = 20) -> HealSpec:
        """The spec a ``--heal`` mode names; ``finetune_epochs`` with ``bn`` fine-tunes too."""
        if mode not in HEAL_MODES:
            raise SdpruneError(f"--heal must be one of {', '.join(HEAL_MODES)}, got {mode!r}")
        epochs = finetune_epochs if finetune_epochs is not None else (
            DEFAULT_FINETUNE_EPOCHS if mode == "finetune" else 0.0)
        if mode == "none" and epochs > 0:
            raise SdpruneError("--heal none fine-tunes nothing: use --heal finetune --finetune-epochs N")
        if mode == "finetune" and epochs == 0:
            raise SdpruneError("--heal finetune needs --finetune-epochs above 0")
        return cls(bn=mode != "none", finetune_epochs=float(epochs), distill=distill,
                   bn_batches=bn_batches)  # which checks the epochs (NaN, negative) and batches

    @property
    def mode(self) -> str:
        """The ``--heal`` mode this spec is: none, bn or finetune."""
        return "finetune" if self.finetune_epochs > 0 else "bn" if self.bn else "none"

    def record(self) -> dict:
        """The settings that change a result (JSON-ready): mode, epochs, distillation, BN batches."""
        return {"heal": self.mode, "finetune_epochs": self.finetune_epochs,
                "distill": self.distill and self.finetune_epochs > 0, "bn_batches": self.bn_batches if self.bn else None}


BN_HEAL = HealSpec()  # the default: BN statistics, kept where they help val


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: DataBundle, device: torch.device | str = "cpu",
                   batches: int = 20, batch_size: int = 128, seed: int = 0) -> int:
    """Re-estimate every BatchNorm's running mean and variance on training images.

    Statistics are reset and accumulated as a cumulative average (momentum None) over
    ``batches`` shuffled, unaugmented batches, with every other layer in eval mode.
    Returns the number of images seen. The model is left in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    if not norms or batches < 1:
        model.eval()
        return 0
    per_image = norm_values_per_image(model, data.input_shape)
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    seen = 0
    mean_std = normalization(data.mean, data.std, device)
    try:
        gen = torch.Generator().manual_seed(seed)
        for step, (images, _) in enumerate(iterate_batches(data.train, batch_size, gen)):
            if step >= batches:
                break
            if len(images) * (per_image or 2) < 2:
                continue  # the last, one-image batch: BatchNorm cannot take statistics of one value
            model(normalize(images.to(device, non_blocking=True), *mean_std))
            seen += len(images)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()
    return seen


def finetune(model: nn.Module, teacher: nn.Module | None, data: DataBundle, epochs: float = 1.0,
             device: torch.device | str = "cpu", lr: float = 0.01, batch_size: int = 128,
             distill: bool = True, temperature: float = 1.0, alpha: float = 0.5,
             weight_decay: float = 1e-4, seed: int = 0, reporter: Reporter | None = None) -> dict:
    """Short SGD fine-tune of a pruned network, distilled from ``teacher`` by default.

    Loss: ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy`` with
    distillation (Hinton et al.), plain cross-entropy without. T = 1 by default: on a
    pruned Fashion-MNIST ResNet-20 the classic T = 4, alpha = 0.9 lost 6 more points in a
    one-epoch heal than T = 1 did. Learning rate follows a cosine from ``lr`` to 0;
    Nesterov momentum 0.9, whatever the network was trained with (an AdamW-trained network
    too: a short distilled heal from its own weights, measured only with SGD); training
    augmentation as in training. BatchNorm statistics end
    as a short moving average: re-estimate them afterwards (``recalibrate_bn``).
    Returns {"steps", "loss"} (mean loss of the last epoch). The model ends in eval mode.
    """
    reporter = reporter or Reporter(quiet=True)
    if distill and teacher is None:
        raise ValueError("distillation needs a teacher")
    drop_last = drops_last(len(data.train), batch_size)  # every batch is full, or the whole set
    check_norm_batch(model, data.input_shape, min(batch_size, len(data.train)), f"fine-tuning on batches of "
                     f"{min(batch_size, len(data.train))} images")
    per_epoch = max(1, num_batches(len(data.train), batch_size, drop_last))
    total = max(1, round(epochs * per_epoch))
    optimizer = build_sgd(model, lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    mean_std = normalization(data.mean, data.std, device)
    gen_order, gen_aug = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    if teacher is not None:
        teacher.eval()
    step, loss_sum, seen, passes = 0, 0.0, 0, 0
    model.train()
    try:
        with expected_gates(model), reporter.progress("fine-tune", total) as bar:
            while step < total:
                loss_sum, seen = 0.0, 0
                # a streamed folder's random resized crops, as in training (from the seed and the pass)
                crops = step_seed(seed + 2, passes)
                passes += 1
                for images, labels in iterate_batches(data.train, batch_size, gen_order, drop_last, crop_seed=crops):
                    if step >= total:
                        break
                    for group in optimizer.param_groups:
                        group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total))
                    x = normalize(augment(images.to(device, non_blocking=True), data.augment, gen_aug), *mean_std)
                    y = labels.to(device, non_blocking=True)
                    logits = model(x).float()
                    target = None
                    if distill:
                        with torch.no_grad():
                            target = teacher(x).float()
                    loss = distillation_loss(logits, target, y, alpha if distill else 0.0, temperature)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    loss_sum += float(loss.detach()) * len(y)
                    seen += len(y)
                    step += 1
                    bar.update(1, f"loss {loss_sum / seen:.4f}")
    finally:
        model.eval()
    return {"steps": step, "loss": loss_sum / max(seen, 1)}


def bn_statistics(model: nn.Module) -> dict[str, Tensor]:
    """A copy of every BatchNorm buffer (running mean, variance, batch count), by name."""
    return {f"{name}.{key}" if name else key: buf.detach().clone() for name, m in model.named_modules()
            if isinstance(m, _BN) for key, buf in m.named_buffers(recurse=False)}


def restore_bn_statistics(model: nn.Module, saved: dict[str, Tensor]) -> None:
    """Put back what ``bn_statistics`` copied (the model's BatchNorm layers must be the same)."""
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, value in saved.items():
            buffers[name].copy_(value)


def improves(new: dict[str, float], old: dict[str, float]) -> bool:
    """Whether scores ``new`` beat ``old``: higher accuracy, or the same and lower loss."""
    return new["acc"] > old["acc"] or (new["acc"] == old["acc"] and new["loss"] < old["loss"])


NO_BATCHNORM = ("BatchNorm healing does not apply: this network has no BatchNorm (LayerNorm networks keep no "
                "running statistics to re-estimate)")


def has_batchnorm(model: nn.Module) -> bool:
    """Whether any BatchNorm of ``model`` keeps running statistics (what ``heal_bn`` re-estimates)."""
    return any(isinstance(m, _BN) and m.track_running_stats for m in model.modules())


def heal_bn(model: nn.Module, data: DataBundle, device: torch.device | str = "cpu", batches: int = 20,
            seed: int = 0) -> dict:
    """Re-estimate BatchNorm statistics, keeping them only where they improve the validation slice.

    Returns {"before", "after", "statistics"}: val/test scores with the statistics the
    network had and with re-estimated ones, and which it keeps ("recalibrated" or
    "trained"; the test split is reported, never used to decide). The model ends with them.
    A network without BatchNorm (ConvNeXt, transformers: LayerNorm) has nothing to
    re-estimate: "statistics" is "none", "note" says why, and before and after are the
    one measurement, so nobody reads a heal into it.
    """
    if not has_batchnorm(model):
        scores = assess(model, data, device)
        return {"before": scores, "after": scores, "statistics": "none", "note": NO_BATCHNORM}
    saved = bn_statistics(model)
    before = assess(model, data, device)
    recalibrate_bn(model, data, device, batches, seed=seed)
    after = assess(model, data, device)
    statistics = "recalibrated" if improves(after["val"], before["val"]) else "trained"
    if statistics == "trained":
        restore_bn_statistics(model, saved)
    return {"before": before, "after": after, "statistics": statistics}


def heal(model: nn.Module, data: DataBundle, spec: HealSpec, device: torch.device | str = "cpu",
         teacher: nn.Module | None = None, seed: int = 0, reporter: Reporter | None = None) -> dict:
    """Heal a pruned network in place as ``spec`` says: fine-tune, then BN statistics (``heal_bn``).

    No re-estimation before fine-tuning: BatchNorm normalises with batch statistics while
    it trains, so the running statistics it starts from change nothing but the tail of
    the moving average, which re-estimation afterwards replaces where that helps.
    Returns {"finetune", "bn"}: each step's record, None where it did not run.
    """
    tuned = None
    if spec.finetune_epochs > 0:
        clock = time.perf_counter()
        tuned = finetune(model, teacher if spec.distill else None, data, spec.finetune_epochs, device,
                         distill=spec.distill, seed=seed, reporter=reporter)
        tuned["wall_s"] = time.perf_counter() - clock
    bn = heal_bn(model, data, device, spec.bn_batches, seed) if spec.bn else None
    return {"finetune": tuned, "bn": bn}
