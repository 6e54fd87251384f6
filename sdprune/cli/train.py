"""`sdprune train`: stochastic-depth training (flags override a --recipe)."""

from __future__ import annotations


def add_parser(sub):
    from sdprune.cli.common import floats, ints
    from sdprune.choices import (BAD_IMAGES, DATA_MODES, DATASETS, FOLDER_IMAGE_SIZE, GRAD_SYNCS, MEMORY_BUDGET,
                                 OPTIMIZERS, RANK_IMAGES, RETROFIT_ANNEAL_END, RETROFIT_CRITERIA, SCHEDULES,
                                 STATS_IMAGES)
    from sdprune.train.config import ADAMW_DEFAULTS, DEFAULT_DISTILL, FINETUNE_DEFAULTS, TrainConfig

    d = TrainConfig()  # every flag not given keeps the recipe's value, else this default

    p = sub.add_parser("train", help="train a network with stochastic depth", description=__doc__)
    a = p.add_argument
    a("--recipe", help="TOML recipe (models/*.toml); flags given here override it (default: none)")
    a("--model", help=f"architecture (sdprune models); default {d.model}")
    a("--dataset", help=f"{' | '.join(DATASETS)} (default {d.dataset})")
    a("--data-dir", help="dataset folder (default ~/.cache/sdprune/data/<dataset>)")
    a("--download", action="store_true", default=None, help="download the dataset if missing")
    a("--image-size", type=int,
      help=f"image side in pixels (default {FOLDER_IMAGE_SIZE} for imagefolder, 32 for synthetic; "
           "other datasets: their own)")
    a("--epochs", type=int, help=f"training epochs (default {d.epochs})")
    a("--batch-size", type=int, help=f"images per step (default {d.batch_size})")
    a("--lr", type=float, help=f"peak learning rate (default {d.lr:g}; {ADAMW_DEFAULTS['lr']:g} with --optimizer "
                               "adamw; with --init a tenth of these)")
    a("--optimizer", choices=OPTIMIZERS,
      help=f"sgd: Nesterov momentum (the paper's) | adamw: betas 0.9, 0.999, as ConvNeXt's, ViT's and Swin's "
           f"recipes (default {d.optimizer})")
    a("--momentum", type=float, help=f"SGD momentum in [0, 1); 0: plain SGD, without Nesterov; unused by adamw "
                                     f"(default {d.momentum:g})")
    a("--weight-decay", type=float, help=f"on weight matrices and kernels (default {d.weight_decay:g}; "
                                         f"{ADAMW_DEFAULTS['weight_decay']:g} with --optimizer adamw)")
    a("--lr-schedule", choices=["step", "cosine"], help=f"default {d.lr_schedule}")
    a("--lr-milestones", type=ints, help="comma-separated epochs where lr is divided by 10 (default 50%%,75%%)")
    a("--warmup-epochs", type=float, help=f"linear learning-rate warm-up (default {d.warmup_epochs:g})")
    a("--label-smoothing", type=float, help=f"in [0, 1) (default {d.label_smoothing:g})")
    a("--survival", help=f"{' | '.join(SCHEDULES)} (default {d.survival})")
    a("--p-last", type=float, help=f"p_L of the linear rule (or p of uniform); default {d.p_last:g}")
    a("--drop-mode", help=f"batch (skips the branch) | row (per-sample mask); default {d.drop_mode}")
    a("--target-survival", type=float, help="learned: mean survival budget (default: linear's mean)")
    a("--target-keep", type=float,
      help="learned, prune-aware: fraction of blocks the pruned model keeps (default: not prune-aware)")
    a("--p-min", type=float, help=f"learned: lowest survival a block may get (default {d.p_min:g})")
    a("--criterion", choices=RETROFIT_CRITERIA,
      help="retrofit with --target-keep: how the blocks to exclude are chosen at step 0. A criterion: "
           f"`sdprune prune --criterion`'s choice ({STATS_IMAGES} validation images, as prune scores by "
           "default); best, a way of choosing rather than a criterion: whichever of ablation, influence and "
           f"norm leaves the best BatchNorm-healed pruned network on {RANK_IMAGES} validation images (default best)")
    a("--anneal-end", type=float, metavar="FRACTION",
      help="retrofit with --target-keep: fraction of training, in (0, 1], by which the excluded blocks are "
           "gone: their survival follows a linear fall from step 0 (lagging it by the controller's smoothing, "
           "0.05 of the run) and is cut to exactly 0 there (below ~0.05 an abrupt removal; "
           f"default {RETROFIT_ANNEAL_END:g})")
    a("--init", metavar="WEIGHTS",
      help="retrofit: start from a trained network (an sdprune run/checkpoint or a torchvision state dict); "
           "its architecture, a fine-tune schedule ({}) and distillation from it become the defaults "
           "(default: none, train from scratch)".format(", ".join(f"{k} {v}" for k, v in FINETUNE_DEFAULTS.items())))
    a("--distill", type=float, help="with --init: weight of distillation from the initial network in [0, 1] "
                                      f"(default {DEFAULT_DISTILL:g} with --init; 0: labels only)")
    a("--distill-temperature", type=float,
      help=f"softmax temperature of distillation (default {d.distill_temperature:g})")
    a("--mean", type=floats, help="input normalisation mean per channel, e.g. 0.49,0.48,0.45 (default: the "
                                  "training images' own; with --init, what its weights expect)")
    a("--std", type=floats, help="input normalisation std per channel (with --mean; default: as --mean)")
    a("--seed", type=int, help=f"0 to 2**63 - 1 (default {d.seed})")
    a("--workers", type=int, help=f"image decoding processes, imagefolder only (default {d.workers})")
    a("--data-mode", choices=DATA_MODES,
      help="imagefolder: decode every image into memory, or stream files through --workers processes "
           f"(auto: stream when the decoded images would pass {MEMORY_BUDGET / 2**30:g} GiB; default {d.data_mode})")
    a("--bad-images", choices=BAD_IMAGES,
      help="imagefolder: an unreadable image fails the run, or is skipped and counted (training takes the "
           f"next readable file in its place; default {d.bad_images})")
    a("--eval-resize", type=int,
      help="imagefolder: side evaluation images are resized to before the centre crop of --image-size "
           "(default: the image size in memory, image size / 0.875 streamed)")
    a("--sync-bn", action="store_true", default=None,
      help="under torchrun: BatchNorm statistics over every rank's images (default: per rank)")
    a("--grad-sync", choices=GRAD_SYNCS,
      help="under torchrun: how gradients are averaged (auto: allreduce on the CPU, ddp on GPUs; "
           f"default {d.grad_sync})")
    a("--device", help=f"auto | cpu | cuda | cuda:N; under torchrun each rank takes its local GPU (default {d.device})")
    a("--no-amp", dest="amp", action="store_false", default=None, help="no bfloat16 autocast on CUDA")
    a("--out", help="run folder (default runs/<model>-<dataset>-<survival>-<time>)")
    a("--resume", nargs="?", const="latest", metavar="RUN",
      help="continue an interrupted run (a run folder or checkpoint; no value: the newest run; default: a new run)")
    return p


def run(args, reporter) -> int:
    from sdprune.prune.retrofit import rank_for_retrofit
    from sdprune.train.adopt import with_init_data
    from sdprune.train.checkpoint import load_checkpoint
    from sdprune.train.config import TrainConfig, config_fields, refuse_no_training, resolve_config
    from sdprune.train.loop import train
    from sdprune.train.runs import resolve_resume
    from sdprune.train.schema import check_resumable

    overrides = {f.name: getattr(args, f.name, None) for f in config_fields()}
    refuse_no_training(overrides)
    resume = None
    if args.resume is not None:
        resume = resolve_resume(None if args.resume == "latest" else args.resume, reporter)
        if resume.is_file():
            check_resumable(load_checkpoint(resume))  # a bad file fails here, before any other message
        ignored = [f"--{k.replace('_', '-')}" for k, v in overrides.items()
                   if v is not None and k not in ("device", "workers")]
        if ignored or args.recipe:
            reporter.warn(f"--resume continues the run's saved config; ignoring {', '.join(ignored) or '--recipe'}")
        config = TrainConfig(device=args.device or "auto", workers=args.workers or 0)
    else:
        config = resolve_config(args.recipe, with_init_data(overrides, args.recipe, reporter))
        if config.optimizer == "adamw" and args.momentum is not None:
            reporter.warn("--momentum is SGD's; adamw trains with betas 0.9, 0.999 and ignores it")
    summary = train(config, reporter, resume=resume, rank_blocks=rank_for_retrofit)
    final = summary["final"]
    if final:
        reporter.info(f"done: {summary['checkpoint']}  test {final['test_acc']:.2f}%  val {final['val_acc']:.2f}%"
                      f"  in {summary['wall_s']:.0f}s")
    reporter.result(summary)
    return 0
