"""`sdprune sweep`: accuracy against size and latency over keep values and criteria."""

from __future__ import annotations

import argparse


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def add_parser(sub):
    from sdprune.prune.heal import HEAL_MODES
    from sdprune.prune.sweep import DEFAULT_CRITERIA, DEFAULT_KEEPS

    p = sub.add_parser("sweep", help="the footprint curve: accuracy vs size and latency", description=__doc__)
    a = p.add_argument
    a("checkpoint", nargs="?", help="checkpoint or run folder (default: the newest unpruned run)")
    a("--keep", type=_floats, default=DEFAULT_KEEPS, help="comma-separated kept fractions")
    a("--criteria", type=_names, default=DEFAULT_CRITERIA, help="comma-separated criteria")
    a("--heal", choices=HEAL_MODES, default="bn",
      help="as `sdprune prune --heal`: bn re-estimates BatchNorm statistics where that helps val (default); "
           "finetune fine-tunes first")
    a("--finetune-epochs", type=float, help="epochs of distilled fine-tuning (default 1 with --heal finetune)")
    a("--no-onnx", dest="onnx", action="store_false", help="skip ONNX export and latency (faster)")
    a("--repeats", type=int, default=30, help="timed runs per model at batch 1")
    a("--threads", type=int, help="ONNX Runtime threads (default: all CPUs)")
    a("--seed", type=int, default=0)
    a("--device", default="auto")
    a("--out", help="output folder (default: the checkpoint's run folder)")
    return p


def run(args, reporter) -> int:
    from sdprune.prune.heal import HealSpec
    from sdprune.prune.sweep import sweep_checkpoint

    heal = HealSpec.of(args.heal, args.finetune_epochs)
    result = sweep_checkpoint(args.checkpoint, args.keep, args.criteria, heal, args.onnx, args.repeats,
                              args.threads, args.device, args.seed, args.out, reporter)
    reporter.info(f"wrote {', '.join(result['files'].values())}")
    reporter.result(result)
    return 0
