"""`sdprune bench`: ONNX Runtime CPU latency of one or more exported models.

Several models are measured interleaved in one run (round-robin after a warm-up); each
one's ratio to the first is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse


def add_parser(sub):
    from sdprune.cli.common import ints
    from sdprune.deploy.latency import DEFAULT_BATCH_SIZES, DEFAULT_REPEATS, DEFAULT_WARMUP

    p = sub.add_parser("bench", help="ONNX Runtime latency of exported models (p50/p90)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("models", nargs="+", metavar="MODEL.onnx", help="exported models; ratios are to the first")
    a("--threads", type=int, help="intra-op threads (default: every CPU this process may use)")
    a("--warmup", type=int, default=DEFAULT_WARMUP, help=f"untimed rounds first (default {DEFAULT_WARMUP})")
    a("--repeats", type=int, default=DEFAULT_REPEATS, help=f"timed rounds (default {DEFAULT_REPEATS})")
    a("--batch-sizes", type=ints, default=DEFAULT_BATCH_SIZES,
      help=f"comma-separated batch sizes (default {','.join(map(str, DEFAULT_BATCH_SIZES))})")
    return p


def run(args, reporter) -> int:
    from sdprune.deploy.latency import bench_onnx

    result = bench_onnx(args.models, threads=args.threads, warmup=args.warmup, repeats=args.repeats,
                        batch_sizes=args.batch_sizes, reporter=reporter)
    reporter.result(result)
    return 0
