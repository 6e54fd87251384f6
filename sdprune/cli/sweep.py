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
    from sdprune.prune.sweep import DEFAULT_CRITERIA, DEFAULT_KEEPS

    p = sub.add_parser("sweep", help="the footprint curve: accuracy vs size and latency", description=__doc__)
    a = p.add_argument
    a("checkpoint", nargs="?", help="checkpoint or run folder (default: the newest unpruned run)")
    a("--keep", type=_floats, default=DEFAULT_KEEPS, help="comma-separated kept fractions")
    a("--criteria", type=_names, default=DEFAULT_CRITERIA, help="comma-separated criteria")
    a("--heal", default="bn", help="none | bn | finetune (default bn)")
    a("--finetune-epochs", type=float, default=1.0, help="epochs of distilled fine-tuning with --heal finetune")
    a("--no-onnx", dest="onnx", action="store_false", help="skip ONNX export and latency (faster)")
    a("--repeats", type=int, default=30, help="timed runs per model at batch 1")
    a("--threads", type=int, help="ONNX Runtime threads (default: all CPUs)")
    a("--seed", type=int, default=0)
    a("--device", default="auto")
    a("--out", help="output folder (default: the checkpoint's run folder)")
    return p


def run(args, reporter) -> int:
    from sdprune.prune.sweep import sweep_checkpoint

    result = sweep_checkpoint(args.checkpoint, args.keep, args.criteria, args.heal, args.finetune_epochs,
                              args.onnx, args.repeats, args.threads, args.device, args.seed, args.out, reporter)
    reporter.info(f"wrote {', '.join(result['files'].values())}")
    reporter.result(result)
    return 0
