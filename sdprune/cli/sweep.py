"""`sdprune sweep`: accuracy against size and latency over keep values and criteria.

Every point is what `sdprune prune` makes with the same options. Writes sweep.json, .csv,
.md and .png to the checkpoint's folder, where a sweep made with other settings is
refused (the same sweep may be redone), or to --out.
"""

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
    from sdprune.cli.common import add_pruning_args
    from sdprune.choices import SWEEP_CRITERIA, SWEEP_KEEPS, SWEEP_REPEATS

    p = sub.add_parser("sweep", help="the footprint curve: accuracy vs size and latency", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("checkpoint", nargs="?", help="checkpoint or run folder (default: the newest unpruned run)")
    a("--keep", type=_floats, default=SWEEP_KEEPS,
      help=f"comma-separated kept fractions (default {','.join(f'{k:g}' for k in SWEEP_KEEPS)})")
    a("--criteria", type=_names, default=SWEEP_CRITERIA,
      help=f"comma-separated criteria (default {','.join(SWEEP_CRITERIA)})")
    add_pruning_args(p)
    a("--no-onnx", dest="onnx", action="store_false", help="skip ONNX export and latency (faster)")
    a("--repeats", type=int, default=SWEEP_REPEATS, help=f"timed runs per model at batch 1 (default {SWEEP_REPEATS})")
    a("--threads", type=int, help="ONNX Runtime threads (default: all CPUs)")
    a("--out", help="output folder (default: the checkpoint's folder, where a sweep made with other settings "
                    "is refused)")
    return p


def run(args, reporter) -> int:
    from sdprune.cli.common import heal_spec
    from sdprune.prune.sweep import sweep_checkpoint

    result = sweep_checkpoint(args.checkpoint, args.keep, args.criteria, heal_spec(args), onnx=args.onnx,
                              bench_repeats=args.repeats, threads=args.threads, device=args.device, seed=args.seed,
                              out=args.out, keep_stages=args.keep_stages, batch_size=args.batch_size,
                              stats_images=args.stats_images, reporter=reporter)
    reporter.info(f"wrote {', '.join(result['files'].values())}")
    reporter.result(result)
    return 0
