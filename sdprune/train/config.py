"""Training hyperparameters in one place (with units), TOML recipes and CLI overrides."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdprune.choices import (BAD_IMAGES, DATA_MODES, DROP_MODES, FOLDER_IMAGE_SIZE, GRAD_SYNCS, OPTIMIZERS, PRIOR,
                             RETROFIT_CRITERIA,
                             SCHEDULES, check_seed)
from sdprune.errors import SdpruneError

MAX_IMAGE_SIZE = 4096  # pixels
MAX_WORKERS = 256  # image decoding processes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


DEFAULT_MODEL = "resnet32"


# Images per evaluation batch (every evaluation's default). On a 2-core CPU 512 ran 30% slower
# than 256 or 128 (ResNet-56 at 32 px, whole and pruned to 14 blocks; BENCHMARKS.md "What a
# prune spends its time on"); 256 was not measured against larger batches on a GPU.
EVAL_BATCH_SIZE = 256


@dataclass(frozen=True)
class TrainConfig:
    # what to train
    model: str | None = None               # None: resnet32, or with --init the architecture of its file
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    image_size: int | None = None          # pixels; imagefolder / synthetic only
    # optimisation (the paper's: SGD, Nesterov 0.9, wd 1e-4, lr 0.1 / 10 at 50% and 75%)
    epochs: int = 30
    batch_size: int = 64                   # images per step (the paper: 128; recipes set it)
    lr: float = 0.1                        # peak learning rate
    optimizer: str = "sgd"                 # sgd | adamw (choices.OPTIMIZERS)
    momentum: float = 0.9                  # 0: plain SGD (then without Nesterov, which needs momentum)
    nesterov: bool = True
    weight_decay: float = 1e-4             # on weight matrices and kernels only (trainer.decay_groups)
    lr_schedule: str = "step"              # "step" (divide by 10 at milestones) or "cosine"
    lr_milestones: tuple[int, ...] | None = None  # epochs; None = 50% and 75% of training
    warmup_epochs: float = 0.0             # linear warm-up, epochs
    label_smoothing: float = 0.0
    # stochastic depth
    survival: str = "linear"               # linear | uniform | none | learned (prior: adopted, epochs 0)
    p_last: float = 0.5                    # p_L of the linear rule, p of uniform
    drop_mode: str = "batch"               # batch (skips compute) | row (per-sample mask)
    target_survival: float | None = None   # learned: mean survival budget (None: linear's mean)
    target_keep: float | None = None       # learned, prune-aware: fraction of blocks to keep
    p_min: float = 0.05                    # learned: lower bound of a survival probability
    criterion: str | None = None           # retrofit, prune-aware: step-0 ranking (None: best; RETROFIT_CRITERIA)
    anneal_end: float | None = None        # retrofit, prune-aware: fraction of training by which the excluded
                                           # blocks are gone (None: choices.RETROFIT_ANNEAL_END)
    # retrofit: start from trained weights (see sdprune.train.adopt)
    init: str | None = None                # sdprune checkpoint/run folder or a torchvision state dict file
    distill: float | None = None           # weight of distillation from the initial network (None: 0.5 with --init)
    distill_temperature: float = 1.0       # softmax temperature of the distillation loss
    mean: tuple[float, ...] | None = None  # input normalisation per channel (None: the data's own
    std: tuple[float, ...] | None = None   # statistics, or what --init's weights were trained with)
    # run
    seed: int = 0
    workers: int = 0                       # image decoding processes (imagefolder)
    data_mode: str = "auto"                # imagefolder: memory | stream | auto (choices.MEMORY_BUDGET)
    bad_images: str = "fail"               # imagefolder: an unreadable file fails the run, or is skipped
    eval_resize: int | None = None         # pixels; imagefolder evaluation resize before the centre crop
                                           # (None: image_size in memory, image_size / 0.875 streamed)
    sync_bn: bool = False                  # torchrun: BatchNorm statistics over every rank's images
    grad_sync: str = "auto"                # torchrun: how gradients are averaged (auto | ddp | ddp-skip-unused | allreduce)
    world_size: int = 1                    # processes training together (set by torchrun, recorded)
    device: str = "auto"                   # auto | cpu | cuda | cuda:N
    amp: bool = True                       # bfloat16 autocast on CUDA (ignored on the CPU)
    channels_last: bool = True             # on CUDA
    eval_batch_size: int = EVAL_BATCH_SIZE
    out: str | None = None                 # run folder; None = runs/<model>-<dataset>-<survival>-<time>

    def __post_init__(self) -> None:
        if self.model is None and self.init is None:
            object.__setattr__(self, "model", DEFAULT_MODEL)
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("lr_milestones", "mean", "std"):
            d[key] = list(d[key]) if d[key] is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SdpruneError(f"unknown config key(s): {', '.join(unknown)}")
        check_types(d)
        d = dict(d)
        if d.get("lr_milestones") is not None:
            d["lr_milestones"] = tuple(int(m) for m in d["lr_milestones"])
        for key in ("mean", "std"):
            if d.get(key) is not None:
                d[key] = tuple(float(v) for v in d[key])
        return cls(**d)


def validate(c: TrainConfig) -> None:
    """Reject values no run can use, with a message that names the flag."""

    def bad(msg: str) -> None:
        raise SdpruneError(msg)

    if c.epochs < (0 if c.init is not None else 1):  # 0: adopted as it is (`sdprune adopt`)
        bad(f"--epochs must be at least 1, got {c.epochs}")
    check_seed(c.seed)
    if not (c.warmup_epochs >= 0 and math.isfinite(c.warmup_epochs)):  # NaN fails too
        bad(f"--warmup-epochs must be a number >= 0, got {c.warmup_epochs}")
    if c.batch_size < 1:
        bad(f"--batch-size must be at least 1, got {c.batch_size}")
    if c.eval_batch_size < 1:
        bad(f"eval_batch_size must be at least 1, got {c.eval_batch_size}")
    if c.image_size is not None and not 1 <= c.image_size <= MAX_IMAGE_SIZE:
        bad(f"--image-size must be 1 to {MAX_IMAGE_SIZE} pixels, got {c.image_size}")
    if not (c.lr > 0 and math.isfinite(c.lr)):
        bad(f"--lr must be a positive number, got {c.lr}")
    if c.optimizer not in OPTIMIZERS:
        bad(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {c.optimizer!r}")
    if not 0.0 <= c.momentum < 1.0:  # also rejects NaN
        bad(f"--momentum must be in [0, 1), got {c.momentum}")
    if not (c.weight_decay >= 0 and math.isfinite(c.weight_decay)):
        bad(f"--weight-decay must be a number >= 0, got {c.weight_decay}")
    if not 0.0 < c.p_last <= 1.0:
        bad(f"--p-last must be in (0, 1], got {c.p_last}")
    if c.survival not in SCHEDULES and not (c.survival == PRIOR and c.epochs == 0):  # prior: an adopted run's record
        bad(f"--survival must be one of {', '.join(SCHEDULES)}, got {c.survival!r}")
    if c.drop_mode not in DROP_MODES:
        bad(f"--drop-mode must be one of {', '.join(DROP_MODES)}, got {c.drop_mode!r}")
    if c.lr_schedule not in ("step", "cosine"):
        bad(f"--lr-schedule must be step or cosine, got {c.lr_schedule!r}")
    if not 0.0 <= c.label_smoothing < 1.0:
        bad(f"--label-smoothing must be in [0, 1), got {c.label_smoothing}")
    if not 0.0 <= c.p_min < 1.0:
        bad(f"--p-min must be in [0, 1), got {c.p_min}")
    for flag, value in (("--target-survival", c.target_survival), ("--target-keep", c.target_keep)):
        if value is not None:
            if not 0.0 < value <= 1.0:  # also rejects NaN
                bad(f"{flag} must be in (0, 1], got {value}")
            if c.survival != "learned":
                bad(f"{flag} needs --survival learned (got --survival {c.survival})")
    if c.criterion is not None and c.criterion not in RETROFIT_CRITERIA:
        bad(f"--criterion must be one of {', '.join(RETROFIT_CRITERIA)}, got {c.criterion!r}")
    if c.anneal_end is not None and not 0.0 < c.anneal_end <= 1.0:  # also rejects NaN
        bad(f"--anneal-end must be in (0, 1], got {c.anneal_end}")
    for flag, value in (("--criterion", c.criterion), ("--anneal-end", c.anneal_end)):
        if value is not None and (c.init is None or c.target_keep is None):
            bad(f"{flag} shapes a prune-aware retrofit: it needs --init with --survival learned --target-keep")
    if c.target_survival is not None and c.target_survival < c.p_min:
        bad(f"--target-survival {c.target_survival} is below --p-min {c.p_min}: no survivals meet it")
    if c.data_mode not in DATA_MODES:
        bad(f"--data-mode must be one of {', '.join(DATA_MODES)}, got {c.data_mode!r}")
    if c.data_mode == "stream" and c.dataset != "imagefolder":
        bad(f"--data-mode stream reads image folders; {c.dataset} is read into memory")
    if c.bad_images not in BAD_IMAGES:
        bad(f"--bad-images must be one of {', '.join(BAD_IMAGES)}, got {c.bad_images!r}")
    if c.eval_resize is not None and not 1 <= c.eval_resize <= MAX_IMAGE_SIZE:
        bad(f"--eval-resize must be 1 to {MAX_IMAGE_SIZE} pixels, got {c.eval_resize}")
    if c.eval_resize is not None and c.eval_resize < (c.image_size or FOLDER_IMAGE_SIZE):
        bad(f"--eval-resize {c.eval_resize} is smaller than the {c.image_size or FOLDER_IMAGE_SIZE}-pixel "
            "crop it is cut to")
    if c.grad_sync not in GRAD_SYNCS:
        bad(f"--grad-sync must be one of {', '.join(GRAD_SYNCS)}, got {c.grad_sync!r}")
    if c.world_size < 1:
        bad(f"world_size must be at least 1, got {c.world_size}")
    if c.batch_size % c.world_size:
        bad(f"--batch-size {c.batch_size} does not split evenly over {c.world_size} processes")
    if not 0 <= c.workers <= MAX_WORKERS:
        bad(f"--workers must be 0 to {MAX_WORKERS}, got {c.workers}")
    if c.lr_milestones is not None and any(m < 0 for m in c.lr_milestones):
        bad("--lr-milestones must be epochs >= 0")
    if c.distill is not None:
        if not 0.0 <= c.distill <= 1.0:  # also rejects NaN
            bad(f"--distill must be in [0, 1], got {c.distill}")
        if c.distill > 0 and c.init is None:
            bad("--distill needs --init: the teacher is the network training starts from")
    if (c.mean is None) != (c.std is None):
        bad("--mean and --std go together: give both, one value per image channel")
    if c.mean is not None and c.std is not None:
        if len(c.mean) != len(c.std) or not c.mean:
            bad(f"--mean has {len(c.mean)} values and --std {len(c.std)}: one of each per image channel")
        if not all(math.isfinite(v) for v in c.mean) or not all(v > 0 and math.isfinite(v) for v in c.std):
            bad("--mean must be finite numbers and --std positive finite numbers")
    if not (c.distill_temperature > 0 and math.isfinite(c.distill_temperature)):
        bad(f"--distill-temperature must be a positive number, got {c.distill_temperature}")
    if c.distill_temperature != 1.0 and c.init is None:
        bad("--distill-temperature needs --init: there is no teacher to distil from")


def check_types(d: dict[str, Any]) -> None:
    """Every value of a config dict (a recipe, a checkpoint's config) has its field's type."""
    hints = typing.get_type_hints(TrainConfig)
    for key, value in d.items():
        if key in hints and not _has_type(value, hints[key]):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:60] + "..."
            raise SdpruneError(f"config key {key!r} must be {_type_name(hints[key])}, got {shown}")


def _has_type(value: Any, hint: Any) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_has_type(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if typing.get_origin(hint) is tuple:  # tuple[int, ...]: a list or tuple of them
        (item, *_) = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and all(_has_type(v, item) for v in value)
    return True  # a type this check does not know: left to validate()


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return "a list of " + {int: "whole numbers", float: "numbers", str: "strings"}.get(typing.get_args(hint)[0], "values")
    return {type(None): "none", bool: "true/false", int: "a whole number", float: "a number",
            str: "a string"}.get(hint, str(hint))


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a TOML recipe: flat keys named like TrainConfig fields."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise SdpruneError(f"recipe {path} not found") from None
    except OSError as err:  # a folder, no permission ...
        raise SdpruneError(f"cannot read recipe {path}: {err.strerror or type(err).__name__}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise SdpruneError(f"recipe {path} is not valid TOML: {err}") from None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SdpruneError(f"recipe {path}: unknown key(s) {', '.join(unknown)}")
    return data


# Retrofit (``--init``): the network is already trained, so the defaults become a
# fine-tune's: a tenth of the from-scratch peak lr, a short linear warm-up (the
# momentum buffers start empty on trained weights), a cosine to 0, few epochs.
FINETUNE_DEFAULTS: dict[str, Any] = {"epochs": 5, "lr": 0.01, "lr_schedule": "cosine", "warmup_epochs": 0.5}
DEFAULT_DISTILL = 0.5  # with --init: half distillation from the initial network, half labels
# --optimizer adamw: the scale of ConvNeXt's, ViT's and Swin's recipes at batch 128-256
# (their 4e-3 and 1e-3 are for batch 4096 and 1024), the same tenth with --init.
ADAMW_DEFAULTS: dict[str, Any] = {"lr": 1e-3, "weight_decay": 0.05}
ADAMW_FINETUNE_LR = 1e-4


def refuse_no_training(overrides: dict[str, Any]) -> None:
    """`sdprune train` trains: ``--epochs 0`` (which ``validate`` lets an adoption have) is
    refused, pointing at `sdprune adopt`, before any other check (a resume's too)."""
    if overrides.get("epochs") == 0:
        raise SdpruneError("--epochs must be at least 1; to bind weights to a dataset without training, "
                           "use `sdprune adopt WEIGHTS`")


def resolve_config(recipe: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """Defaults < (fine-tune defaults, with ``init``) < (AdamW's, with ``optimizer`` adamw) <
    recipe < command-line flags: SGD's lr 0.1 and weight decay 1e-4 would be wrong for AdamW.

    None in ``overrides`` means 'not given'.
    """
    values: dict[str, Any] = load_recipe(recipe) if recipe else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    base: dict[str, Any] = {}
    if values.get("init") is not None:
        if not str(values["init"]).strip():
            raise SdpruneError("--init needs a path")
        # absolute: a resume from another folder must find the same teacher (realpath, not
        # Path.resolve: a symbolic link loop is reported by the run, in one line, not raised here)
        values["init"] = os.path.realpath(os.path.expanduser(values["init"]))
        base.update(FINETUNE_DEFAULTS)
    if values.get("optimizer") == "adamw":
        base.update(ADAMW_DEFAULTS)
        if values.get("init") is not None:
            base["lr"] = ADAMW_FINETUNE_LR
    return TrainConfig.from_dict({**base, **values})


def distill_weight(config: TrainConfig) -> float:
    """The distillation weight a config trains with (``DEFAULT_DISTILL`` with --init unless set)."""
    if config.distill is not None:
        return config.distill
    return DEFAULT_DISTILL if config.init is not None else 0.0


def config_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(TrainConfig))


__all__ = ["ADAMW_DEFAULTS", "ADAMW_FINETUNE_LR", "DEFAULT_DISTILL", "FINETUNE_DEFAULTS", "TrainConfig",
           "config_fields", "distill_weight", "load_recipe", "refuse_no_training", "resolve_config", "validate"]
