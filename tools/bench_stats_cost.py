"""What `sdprune stats` costs, in evaluation passes (BENCHMARKS.md "Statistics cost").

Alternates one plain evaluation pass and one full statistics run (drop-one ablation with
the shared prefix, influence, norms) over the same validation images, several times, and
reports the median ratio next to the FLOP model's prediction and the L + 1 passes a
naive drop-one would cost. Weights do not change the cost, so the network is untrained.

    python tools/bench_stats_cost.py --model resnet110 --dataset fashion-mnist --images 256
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdprune.data.bundle import load_data
from sdprune.depth.schedule import set_survival, survival_schedule
from sdprune.depth.structure import block_layout, gated_blocks
from sdprune.nets.registry import create_model
from sdprune.prune.stats import ablation_flop_ratio, collect_stats
from sdprune.train.evaluate import evaluate, resolve_device


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet110")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir")
    p.add_argument("--images", type=int, default=256, help="validation images per pass")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    data = load_data(args.dataset, args.data_dir)
    data.val = data.val.subset(torch.arange(min(args.images, len(data.val))))
    torch.manual_seed(0)
    model = create_model(args.model, len(data.classes), data.input_shape[0])
    L = len(gated_blocks(model))
    set_survival(model, survival_schedule("linear", L))
    model.to(dev).eval()

    def eval_pass() -> float:
        t0 = time.perf_counter()
        evaluate(model, data.val, data.mean, data.std, dev, args.batch_size)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def stats_pass() -> float:
        t0 = time.perf_counter()
        collect_stats(model, data, dev, args.batch_size)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    eval_pass()  # warm-up
    ratios, evals, stats = [], [], []
    for _ in range(args.repeats):
        e, s = eval_pass(), stats_pass()
        evals.append(e)
        stats.append(s)
        ratios.append(s / e)
    predicted = ablation_flop_ratio(block_layout(model, tuple(data.input_shape)))
    print(f"{args.model} ({L} blocks) on {args.dataset} {list(data.input_shape)}, {len(data.val)} val images, "
          f"batch {args.batch_size}, device {dev}, threads {torch.get_num_threads()}, torch {torch.__version__}")
    print(f"eval pass median {statistics.median(evals):.2f} s; statistics median {statistics.median(stats):.2f} s; "
          f"ratio median {statistics.median(ratios):.1f} passes (each: {', '.join(f'{r:.1f}' for r in ratios)}); "
          f"FLOP model {predicted:.1f}; naive drop-one {L + 1} passes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
