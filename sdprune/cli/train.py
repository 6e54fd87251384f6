"""`sdprune train`: stochastic-depth training (flags override a --recipe)."""

from __future__ import annotations

import argparse


def add_parser(sub):
    from sdprune.cli.common import ints

    p = sub.add_parser("train", help="train a network with stochastic depth", description=__doc__,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--recipe", help="TOML recipe (models/*.toml); flags given here override it")
    a("--model", help="architecture (sdprune models); default resnet32")
    a("--dataset", help="digits | synthetic | mnist | fashion-mnist | cifar10 | cifar100 | svhn | imagefolder")
    a("--data-dir", help="dataset folder (default ~/.cache/sdprune/data/<dataset>)")
    a("--download", action="store_true", default=None, help="download the dataset if missing")
    a("--image-size", type=int, help="image side in pixels (imagefolder, synthetic)")
    a("--epochs", type=int)
    a("--batch-size", type=int)
    a("--lr", type=float)
    a("--momentum", type=float)
    a("--weight-decay", type=float)
    a("--lr-schedule", choices=["step", "cosine"])
    a("--lr-milestones", type=ints, help="comma-separated epochs where lr is divided by 10 (default 50%%,75%%)")
    a("--warmup-epochs", type=float)
    a("--label-smoothing", type=float)
    a("--survival", help="linear | uniform | none | learned")
    a("--p-last", type=float, help="p_L of the linear rule (or p of uniform); default 0.5")
    a("--drop-mode", help="batch (skips the branch) | row (per-sample mask)")
    a("--target-survival", type=float, help="learned: mean survival budget (default: linear's mean)")
    a("--target-keep", type=float, help="learned, prune-aware: fraction of blocks the pruned model keeps")
    a("--p-min", type=float, help="learned: lowest survival a block may get")
    a("--init", metavar="WEIGHTS",
      help="retrofit: start from a trained network (an sdprune run/checkpoint or a torchvision state dict); "
           "its architecture, a fine-tune schedule (5 epochs, lr 0.01 cosine, 0.5 warm-up) and distillation "
           "from it become the defaults")
    a("--distill", type=float, help="with --init: weight of distillation from the initial network in [0, 1] "
                                      "(default 0.5; 0: labels only)")
    a("--distill-temperature", type=float, help="softmax temperature of distillation (default 1)")
    a("--seed", type=int)
    a("--workers", type=int)
    a("--device", help="auto | cpu | cuda")
    a("--no-amp", dest="amp", action="store_false", default=None, help="no bfloat16 autocast on CUDA")
    a("--out", help="run folder (default runs/<model>-<dataset>-<survival>-<time>)")
    a("--resume", nargs="?", const="latest", metavar="RUN",
      help="continue an interrupted run (a run folder or checkpoint; no value: the newest run)")
    return p


def run(args, reporter) -> int:
    from sdprune.prune.retrofit import rank_for_retrofit
    from sdprune.train.checkpoint import load_checkpoint
    from sdprune.train.config import TrainConfig, config_fields, resolve_config
    from sdprune.train.loop import train
    from sdprune.train.runs import resolve_resume

    overrides = {f.name: getattr(args, f.name, None) for f in config_fields()}
    resume = None
    if args.resume is not None:
        resume = resolve_resume(None if args.resume == "latest" else args.resume, reporter)
        if resume.is_file():
            load_checkpoint(resume)  # a bad file fails here, before any other message
        ignored = [f"--{k.replace('_', '-')}" for k, v in overrides.items()
                   if v is not None and k not in ("device", "workers")]
        if ignored or args.recipe:
            reporter.warn(f"--resume continues the run's saved config; ignoring {', '.join(ignored) or '--recipe'}")
        config = TrainConfig(device=args.device or "auto", workers=args.workers or 0)
    else:
        config = resolve_config(args.recipe, overrides)
    summary = train(config, reporter, resume=resume, rank_blocks=rank_for_retrofit)
    final = summary["final"]
    if final:
        reporter.info(f"done: {summary['checkpoint']}  test {final['test_acc']:.2f}%  val {final['val_acc']:.2f}%"
                      f"  in {summary['wall_s']:.0f}s")
    reporter.result(summary)
    return 0
