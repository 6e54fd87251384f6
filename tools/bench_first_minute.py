"""The first minute: what the README's first command gives, and which survival it should use.

The first line a new user runs is `sdprune train && sdprune prune --keep 0.5`. This runs
exactly that, per seed and per survival schedule (the paper's linear rule, learned
survival, learned and prune-aware at the keep the line prunes to), and reports the test
accuracy at full depth and after the prune: mean, range and the per-seed figures. The
default schedule is chosen from these figures; nothing here is tuned on the test split
(the prune's choices use the validation slice; the test split is only reported).

    python tools/bench_first_minute.py --out /tmp/first --seeds 0,1,2,3,4
    python tools/bench_first_minute.py --out /tmp/first-fm --dataset fashion-mnist \\
        --data-dir /usr/share/datasets/fashion-mnist --epochs 3 --seeds 0,1,2
    python tools/bench_first_minute.py --out /tmp/first --report

Resumable: each (schedule, seed) writes results/<name>.json when both commands are done;
a rerun skips those. Keep --out outside the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEDULES = {
    "linear": [],  # the paper's rule: `sdprune train`'s default
    "learned": ["--survival", "learned"],
    "learned-keep": ["--survival", "learned", "--target-keep", "{keep}"],
}


def run_json(cmd: list[str], env: dict) -> dict:
    """One sdprune command's --json result (stderr passes through)."""
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}")
    return json.loads(done.stdout)


def run_one(args, schedule: str, seed: int, env: dict) -> dict:
    """Train then prune --keep, as the README's first line does, with one schedule and seed."""
    out = Path(args.out)
    run, pruned = out / "runs" / f"{schedule}-s{seed}", out / "runs" / f"{schedule}-s{seed}-pruned"
    data = ["--dataset", args.dataset] + (["--data-dir", args.data_dir] if args.data_dir else [])
    extra = [a.format(keep=args.keep) for a in SCHEDULES[schedule]]
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    sd = [sys.executable, "-m", "sdprune"]
    trained = run_json(sd + ["train", *data, *epochs, *extra, "--seed", str(seed), "--out", str(run), "--json"], env)
    cut = run_json(sd + ["prune", str(run), "--keep", str(args.keep), "--out", str(pruned), "--json"], env)
    return {"schedule": schedule, "seed": seed, "dataset": args.dataset, "epochs": args.epochs,
            "full_test": trained["final"]["test_acc"], "full_val": trained["final"]["val_acc"],
            "pruned_test": cut["after"]["test"]["acc"], "pruned_val": cut["after"]["val"]["acc"],
            "blocks": f"{cut['blocks']['after']}/{cut['blocks']['before']}"}


def report(out: Path) -> str:
    """A markdown table: per schedule, mean (min-max) over seeds at full depth and pruned."""
    rows = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]
    lines = ["| schedule | seeds | full depth test % | after prune test % | after prune val % | per seed (pruned test) |",
             "|---|---|---|---|---|---|"]

    def cell(xs: list[float]) -> str:
        return f"{statistics.mean(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"

    for name in SCHEDULES:
        group = sorted((r for r in rows if r["schedule"] == name), key=lambda r: r["seed"])
        if group:
            lines.append(f"| {name} | {len(group)} | {cell([r['full_test'] for r in group])} | "
                         f"{cell([r['pruned_test'] for r in group])} | {cell([r['pruned_val'] for r in group])} | "
                         + ", ".join(f"{r['pruned_test']:.2f}" for r in group) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="benchmark folder (outside the repository)")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir")
    p.add_argument("--epochs", type=int, help="default: train's own (the first line's)")
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--schedules", default=",".join(SCHEDULES))
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    if not args.report:
        (out / "results").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for seed in (int(s) for s in args.seeds.split(",")):
            for schedule in args.schedules.split(","):
                result = out / "results" / f"{schedule}-s{seed}.json"
                if result.exists():
                    continue
                figures = run_one(args, schedule, seed, env)
                result.write_text(json.dumps(figures, indent=1))
                print(f"{schedule} seed {seed}: {figures['full_test']:.2f} -> {figures['pruned_test']:.2f}", flush=True)
    print(report(out))


if __name__ == "__main__":
    main()
