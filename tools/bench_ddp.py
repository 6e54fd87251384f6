"""How to average gradients when blocks are skipped: step time of each strategy under torchrun.

Every rank draws the same gates, so a skipped block's parameters have no gradient on any
rank. ``sdprune.train.distributed`` keeps three correct ways to average the rest:

  ddp              DistributedDataParallel(find_unused_parameters=True)
  ddp-skip-unused  the same, with skip_all_reduce_unused_params (no all-reduce of the skipped)
  allreduce        no DDP: one flat all-reduce of the gradients that exist, after backward

and, for reference, plain training (no skipping) through ``ddp`` (DDP without the
unused-parameter search) and through ``allreduce``: the SD/plain step ratio is read within
one averaging, so it does not mix the averaging's cost into the skipping's saving.
Each arm is its own ``torchrun --nproc-per-node P`` launch of this file, one after another;
rank 0 times ``Trainer.step`` (what `sdprune train` runs) over --steps steps after
--warmup, on generated 32x32 images. The arms run in turn --rounds times (a drift of the
machine hits all alike); the median of the rounds is reported, relative to ``ddp``.

    python tools/bench_ddp.py --out bench-out/ddp.json                  # the CPU, gloo
    python tools/bench_ddp.py --device cuda --nproc 2 --batch-size 256  # GPUs, nccl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ARMS = (("ddp", "linear"), ("ddp-skip-unused", "linear"), ("allreduce", "linear"), ("ddp", "none"),
        ("allreduce", "none"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--out", default="bench-out/ddp.json", help="results JSON")
    a("--model", default="resnet56")
    a("--batch-size", type=int, default=64, help="global batch, images")
    a("--steps", type=int, default=30, help="timed steps per arm")
    a("--warmup", type=int, default=5, help="untimed steps first")
    a("--nproc", type=int, default=2, help="processes (torchrun --nproc-per-node)")
    a("--rounds", type=int, default=3, help="the arms run in turn this many times; medians are reported")
    a("--device", default="cpu", help="cpu (gloo) or cuda (nccl)")
    a("--worker", nargs=2, metavar=("GRAD_SYNC", "SURVIVAL"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker(args) -> None:
    """One rank of one arm: time Trainer.step; rank 0 prints the result as JSON."""
    import torch

    from sdprune.data.bundle import load_data
    from sdprune.data.images import iterate_batches, shard_rows
    from sdprune.train.config import TrainConfig
    from sdprune.train.distributed import distributed_session
    from sdprune.train.evaluate import resolve_device
    from sdprune.train.trainer import build_training

    grad_sync, survival = args.worker
    with distributed_session(args.device) as (world, device_name):
        device = resolve_device(device_name)
        data = load_data("synthetic", image_size=32)
        config = TrainConfig(model=args.model, dataset="synthetic", batch_size=args.batch_size, survival=survival,
                             device=device_name, world_size=world.world_size, grad_sync=grad_sync)
        trainer = build_training(config, data, device, world=world)
        part = (shard_rows(args.batch_size, world.shard).start, args.batch_size)
        gen = torch.Generator().manual_seed(0)
        batches = []
        while len(batches) < args.warmup + args.steps:
            batches += list(iterate_batches(data.train, args.batch_size, gen, drop_last=True, shard=world.shard))
        times, executed = [], 0.0
        for step, (images, labels) in enumerate(batches[:args.warmup + args.steps]):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            result = trainer.step(step, images, labels, part)  # reads the loss back: synchronises
            if step >= args.warmup:
                times.append(time.perf_counter() - t0)
                executed += result.executed
        if world.main:
            times.sort()
            print(json.dumps({"grad_sync": grad_sync, "survival": survival, "median_step_s": times[len(times) // 2],
                              "mean_step_s": sum(times) / len(times),
                              "executed_fraction": executed / len(times) / len(trainer.sampler.blocks)}))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    import torch

    runs: dict[tuple[str, str], list[dict]] = {arm: [] for arm in ARMS}
    for round_ in range(args.rounds):  # interleaved, so a drift of the machine hits every arm alike
        for grad_sync, survival in ARMS:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc),
                   __file__, "--worker", grad_sync, survival, "--model", args.model,
                   "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--device", args.device]
            done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if done.returncode != 0:
                sys.exit(f"arm {grad_sync}/{survival} failed:\n{done.stderr[-3000:]}")
            runs[(grad_sync, survival)].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {round_ + 1}: {grad_sync:16s} {survival:7s} median step "
                  f"{runs[(grad_sync, survival)][-1]['median_step_s'] * 1000:.1f} ms", file=sys.stderr)
    rows = []
    for arm, results in runs.items():
        medians = sorted(r["median_step_s"] for r in results)
        rows.append({**results[0], "median_step_s": medians[len(medians) // 2],
                     "rounds_step_s": [r["median_step_s"] for r in results]})
    base = rows[0]["median_step_s"]
    for row in rows:
        row["vs_ddp"] = row["median_step_s"] / base
    meta = {"model": args.model, "global_batch": args.batch_size, "nproc": args.nproc, "device": args.device,
            "steps": args.steps, "rounds": args.rounds, "torch": torch.__version__, "cpus": os.cpu_count(), "machine": platform.processor()
            or platform.machine(), "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "arms": rows}, indent=2))
    print("| gradient averaging | survival | median step (ms) | per round (ms) | vs ddp | executed blocks |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        rounds = ", ".join(f"{t * 1000:.0f}" for t in row["rounds_step_s"])
        print(f"| {row['grad_sync']} | {row['survival']} | {row['median_step_s'] * 1000:.1f} | {rounds} | "
              f"{row['vs_ddp']:.3f} | {row['executed_fraction']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
