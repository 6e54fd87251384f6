"""B1 — training speed: does stochastic depth really save time? (protocol: BENCHMARKS.md, B1)

Time per optimisation step of the same network under several survival set-ups, measured
in ONE process with the arms alternated round-robin (the starting arm rotates every
repeat), after a warm-up; the figure is the median over repeats of the per-repeat ratio
to the reference arm, plain training (the first arm if no plain arm is given; the table
names it). Each repeat's arms ran back to back, so slow drifts of a shared machine
cancel. Both wall time and this process's CPU time are recorded: on a shared CPU with one
torch thread, CPU time leaves out the time other processes held the core.

Arms: plain (`--survival none`), linear p_L = 0.5 in batch mode (skips dropped branches),
the same in row mode (per-sample mask: computes every branch), and learned survival at its
default budget, timed in its ACTIVE phase: its controller is put on a short nominal
schedule (at least LEARNED_STEPS steps, and long enough that every warm-up and timed step
falls after its warm-up and inside the run; up to 799 steps it updates the survivals at
every step, its most expensive setting) and fast-forwarded through its warm-up with real
gate draws and synthetic losses (no network compute: only the regression's statistics are
filled), so every timed step fits the regression and moves the survivals; the table
reports how many timed repeats did. "Gates open" is the fraction of
(block, step) gates drawn open (row mode: of (block, sample) pairs); in batch mode it is
the fraction of branches computed, in row mode every branch is computed regardless.

Each step is the training step of `sdprune train` itself: `sdprune.train.trainer.Trainer.step`
(augment, normalise, draw gates, forward, loss, backward, SGD step, loss read back,
learned-survival update), on a Trainer from `sdprune.train.trainer.build_training`.

    python tools/bench_train_speed.py --threads 2 --steps 2 --repeats 5
    python tools/bench_train_speed.py --device cuda --steps 20 --repeats 10 --warmup 10
    python tools/bench_train_speed.py --device cuda --compile branches ...   # torch.compile

An arm may carry a compile mode, ``ARM@model`` or ``ARM@branches`` (``--compile`` sets it
for arms that name none), so eager and compiled arms are alternated in ONE run:
``model`` compiles the whole network (``nn.Module.compile``; dynamo guards on each
block's installed gate, so every new pattern of skipped blocks is a new graph: only
sensible for plain training); ``branches`` compiles each gated block's branch on its own:
the skip decision stays in Python and every branch keeps one graph (it always runs whole).

    python tools/bench_train_speed.py --device cuda --arms plain,batch,plain@branches,batch@branches
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import torch

from sdprune.data.bundle import load_data
from sdprune.depth.learned import WARMUP
from sdprune.depth.structure import gated_blocks
from sdprune.report import json_text
from sdprune.train.config import TrainConfig
from sdprune.train.evaluate import resolve_device
from sdprune.train.trainer import Trainer, build_training

ARMS = {  # name -> TrainConfig overrides
    "plain": {"survival": "none"},
    "batch": {"survival": "linear", "p_last": 0.5, "drop_mode": "batch"},
    "row": {"survival": "linear", "p_last": 0.5, "drop_mode": "row"},
    "learned": {"survival": "learned", "p_last": 0.5, "drop_mode": "batch"},
}
NOMINAL_STEPS_PER_EPOCH = 390  # CIFAR at batch 128: sets the lr schedule and learned's pace
COMPILE_MODES = ("", "none", "model", "branches")  # "" = the --compile default
LEARNED_STEPS = 400  # the learned arm's shortest nominal run: the controller updates every step (< 800 // 400)


@dataclass
class Arm:
    name: str
    trainer: Trainer
    order: torch.Tensor
    step: int = 0
    open: list[float] = field(default_factory=list)  # fraction of branches executed, per timed step
    times: list[float] = field(default_factory=list)     # wall seconds per step, one per repeat
    cpu: list[float] = field(default_factory=list)       # this process's CPU seconds per step
    updates: list[bool] = field(default_factory=list)    # per timed step: did the survivals move?

    @property
    def config(self) -> TrainConfig:
        return self.trainer.config

    @property
    def sampler(self):
        return self.trainer.sampler


def learned_run_steps(stepped: int) -> int:
    """Nominal length of the learned arm's run: its warm-up is fast-forwarded, then ``stepped``
    real steps (warm-up and timed) must still fall inside the run, so all of them are active."""
    return max(LEARNED_STEPS, math.ceil((stepped + 2) / (1 - WARMUP)))


def make_arm(spec: str, base: TrainConfig, data, device: torch.device, compile_how: str = "none",
             stepped: int = 0) -> Arm:
    """One arm, ready to step; ``stepped`` is how many steps it will take (sizes the learned run)."""
    name, _, how = spec.partition("@")
    compile_how = how or compile_how
    config = TrainConfig.from_dict({**base.to_dict(), **ARMS[name]})
    learned = config.survival == "learned"
    if learned:
        config = TrainConfig.from_dict({**config.to_dict(), "epochs": 1, "lr_milestones": None})
    steps = learned_run_steps(stepped) if learned else NOMINAL_STEPS_PER_EPOCH
    trainer = build_training(config, data, device, steps_per_epoch=steps)
    trainer.model.train()
    compile_model(trainer.model, compile_how)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(config.seed))
    arm = Arm(spec, trainer, order)
    if learned:
        enter_active_phase(arm)
    return arm


def compile_model(model: torch.nn.Module, how: str) -> None:
    """In place, state dict keys unchanged: the whole network, or each gated branch."""
    if how in ("model", "branches"):
        # one graph per block instance (or gate pattern) must not hit dynamo's default
        # recompile limit of 8, after which it silently falls back to eager
        torch._dynamo.config.cache_size_limit = 256
        torch._dynamo.config.accumulated_cache_size_limit = 4096
    if how == "model":
        model.compile()
    elif how == "branches":
        for _, block in gated_blocks(model):
            block.branch.compile()


def enter_active_phase(arm: Arm) -> None:
    """Run the learned controller through its warm-up on real gate draws and synthetic
    losses (no forward pass), so that the timed steps are in its active phase."""
    controller, sampler, total = arm.trainer.controller, arm.sampler, arm.trainer.total_steps
    end = int(WARMUP * total) + 1
    noise = torch.Generator().manual_seed(1)
    for step in range(end):
        gates = sampler.draw(step, arm.config.batch_size)
        loss = 2.0 - 0.01 * float(gates.sum()) + 0.01 * float(torch.randn(1, generator=noise))
        changed = controller.observe(step, gates, loss, total)
        if changed is not None:
            sampler.refresh(changed)
    arm.step = end


def train_step(arm: Arm, data):
    """One optimisation step: `sdprune train`'s own (Trainer.step), on the next batch."""
    bs = arm.config.batch_size
    start = (arm.step * bs) % (len(arm.order) - bs + 1)
    index = arm.order[start:start + bs]
    result = arm.trainer.step(arm.step, data.train.images[index], data.train.labels[index])
    arm.open.append(result.executed / max(1, len(arm.sampler.blocks)))
    arm.step += 1
    return result


def measure(arms: list[Arm], data, device, steps: int, repeats: int, warmup: int) -> None:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for arm in arms:
        for _ in range(warmup):
            train_step(arm, data)
        arm.open.clear()
    for r in range(repeats):
        for arm in arms[r % len(arms):] + arms[:r % len(arms)]:  # rotate who goes first
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            before = arm.sampler.survival()
            for _ in range(steps):
                train_step(arm, data)
            sync()
            arm.times.append((time.perf_counter() - t0) / steps)
            arm.cpu.append((time.process_time() - c0) / steps)
            arm.updates.append(not torch.equal(before, arm.sampler.survival()))
        print(f"repeat {r + 1}/{repeats}: " + "  ".join(f"{a.name} {1000 * a.times[-1]:.0f} ms" for a in arms),
              file=sys.stderr, flush=True)


def reference(arms: list[Arm]) -> Arm:
    """The arm the others are compared to: plain training (eager first), else the first arm."""
    return next((a for a in arms if a.name == "plain"), next((a for a in arms if a.name.startswith("plain@")), arms[0]))


def summarise(arms: list[Arm]) -> list[dict]:
    ref = reference(arms)
    rows = []
    for arm in arms:
        ratios = [t / p for t, p in zip(arm.times, ref.times)]
        # CPU time of this process: on a shared machine it does not count time spent
        # waiting for other processes (meaningful with --threads 1 on the CPU).
        cpu_ratios = [t / p for t, p in zip(arm.cpu, ref.cpu)]
        survival = arm.sampler.survival()
        rows.append({
            "arm": arm.name, "reference": ref.name, "survival": arm.config.survival, "drop_mode": arm.config.drop_mode,
            "step_ms_median": 1000 * statistics.median(arm.times),
            "ratio_to_reference_median": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios),
            "cpu_step_ms_median": 1000 * statistics.median(arm.cpu),
            "cpu_ratio_to_reference_median": statistics.median(cpu_ratios),
            "cpu_ratio_min": min(cpu_ratios), "cpu_ratio_max": max(cpu_ratios),
            "open_fraction_measured": statistics.fmean(arm.open) if arm.open else math.nan,
            "open_fraction_expected": float(survival.mean()) if survival.numel() else 1.0,
            "survival_moved_repeats": sum(arm.updates), "repeats": len(arm.updates),
        })
    return rows


def machine(device: torch.device) -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "device": str(device),
            "date": time.strftime("%Y-%m-%d")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def markdown(rows: list[dict], info: dict, args: argparse.Namespace) -> str:
    ref = rows[0]["reference"]
    lines = [f"| arm | survival | mode | wall ms/step | wall ratio to {ref} (range) | CPU ms/step | "
             f"CPU-time ratio to {ref} (range) | branches run (measured) / expected open |",
             "|---|---|---|---:|---|---:|---|---|"]
    for r in rows:
        if r["survival"] == "learned":
            r = {**r, "arm": f"{r['arm']} (active: survivals moved in {r['survival_moved_repeats']}/{r['repeats']} "
                             "timed repeats)"}
        lines.append(f"| {r['arm']} | {r['survival']} | {r['drop_mode']} | {r['step_ms_median']:.0f} | "
                     f"**{r['ratio_to_reference_median']:.3f}** ({r['ratio_min']:.2f}–{r['ratio_max']:.2f}) | "
                     f"{r['cpu_step_ms_median']:.0f} | **{r['cpu_ratio_to_reference_median']:.3f}** "
                     f"({r['cpu_ratio_min']:.2f}–{r['cpu_ratio_max']:.2f}) | "
                     f"{r['open_fraction_measured']:.3f} / {r['open_fraction_expected']:.3f} |")
    where = info.get("gpu", f"{info['cpu']}, {info['cores']} cores, {info['threads']} torch threads")
    lines.append(f"\n{args.model} (compile: {args.compile}), {args.size}x{args.size} input, "
                 f"batch {args.batch_size}, {args.steps} steps x {args.repeats} repeats per arm after "
                 f"{args.warmup} warm-up steps; {where}; torch {info['torch']}; {info['date']}.")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    p.add_argument("--model", default="resnet110")
    p.add_argument("--size", type=int, default=32, help="image side (default 32)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=2, help="timed steps per arm per repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per arm first")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--arms", default="plain,batch,row,learned", help=f"comma-separated, of {','.join(ARMS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--compile", choices=COMPILE_MODES[1:], default="none",
                   help="torch.compile the whole model or each gated branch (default none)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.arms.split(",") if n.strip()]
    unknown = [n for n in names if n.partition("@")[0] not in ARMS or n.partition("@")[2] not in COMPILE_MODES]
    if unknown or not names or min(args.steps, args.repeats) < 1 or args.warmup < 0:
        print(f"bench_train_speed: bad arguments (unknown arms: {unknown})", file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    data = load_data("synthetic", image_size=args.size)
    base = TrainConfig(model=args.model, dataset="synthetic", image_size=args.size, batch_size=args.batch_size,
                       epochs=500, lr_milestones=(250, 375), seed=args.seed, device=str(device))
    stepped = args.warmup + args.steps * args.repeats
    arms = [make_arm(n, base, data, device, args.compile, stepped) for n in names]
    measure(arms, data, device, args.steps, args.repeats, args.warmup)
    rows, info = summarise(arms), machine(device)
    print(markdown(rows, info, args))
    if args.json:
        Path(args.json).write_text(json_text({"machine": info, "args": vars(args), "arms": rows}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
