"""B5 on real networks: compress the network someone else trained, or adapt the small one they trained?

The networks are the public CIFAR-10 ResNets (``../shared/data/pretrained``: ResNet-56, -32
and -20, trained 200 epochs by someone else); the data the CIFAR-10 JPEG folders (the
validation slice carved from the training split as sdprune always does; the whole 10,000-
image test split, never used for a choice). Every arm gets the same E epochs ((ae): E more):

  (e)  have56      ResNet-56 as published, fine-tuned E epochs (`sdprune train --init`, plain)
  (d)  small       the published small network of the kept depth class (ResNet-32 for 14
                   blocks, ResNet-20 for 9), fine-tuned E epochs the same way
  (a0) prune-bn    ResNet-56 pruned to the kept blocks, BatchNorm healing only (no training)
  (a)  prune       ResNet-56 pruned, then E epochs of distilled fine-tuning
                   (`sdprune prune --heal finetune --finetune-epochs E`)
  (a0i), (ai)      the same two with the blocks chosen one at a time (`prune --iterative`:
                   after each removal BatchNorm is re-estimated and the rest re-scored),
                   a lever for (a): a better start than one-shot ablation's? (seeds: --seeds-other)
  (ae) prune (e)   (e)'s network, adapted E epochs, pruned as (a) is and fine-tuned E epochs
                   distilled from (e): a lever for (a), the teacher adapted to the data
                   rather than as published, at twice the epochs (runs (e) first; seeds:
                   --seeds-other)
  (b)  retrofit    `sdprune train --init` with learned, prune-aware survival for E epochs,
                   then the free prune (`sdprune prune`, survival ranking, BN heal);
                   ``--criterion`` / ``--anneal-end`` run a variant of its mechanism
                   (`train --criterion/--anneal-end`), named apart (``b-k0.33-s0-ablation-end0.2``)
  (c)  scratch     the small architecture from scratch for E epochs (what E buys alone)

Every arm is the sdprune command line a user runs (logged with its output under
``--out/logs``), after ``sdprune adopt`` of each published file, so the figures measure
the tool, not a re-implementation. Resumable task by task: a finished task leaves
``--out/results/<task>.json`` and is never run again; ``--jobs N`` runs N tasks at once
(each with ``--threads`` torch threads; on a GPU they share the device). Wall times of
tasks that ran together measured each other: the table reports compute in block-epochs,
and per-epoch wall time comes from a separate timing run on an idle machine.

    python tools/bench_real.py --out ../b5real --data-dir /tmp/cifar10 --epochs 3 --jobs 2
    python tools/bench_real.py --out ../b5real --report          # the tables, from results/
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from bench_common import ROOT, Task, run_tasks  # tools/, beside this script

from sdprune.choices import RETROFIT_CRITERIA  # constants only: no torch at import

BLOCKS = {"resnet20": 9, "resnet32": 15, "resnet56": 27}
ARMS = ("e", "d", "a0", "a", "a0i", "ai", "ae", "b", "c")
NAMES = {"e": "(e) ResNet-56, fine-tuned", "d": "(d) published small, fine-tuned", "a0": "(a0) pruned, BN heal",
         "a": "(a) pruned + fine-tune", "a0i": "(a0i) pruned iteratively, BN heal",
         "ai": "(ai) pruned iteratively + fine-tune", "ae": "(ae) (e) pruned + fine-tune",
         "b": "(b) retrofit + prune", "c": "(c) small from scratch"}
PRUNED = ("a0", "a", "a0i", "ai", "ae", "b")


def small_net(kept: int) -> str:
    """The published network of the kept depth class: the smallest with at least ``kept`` blocks."""
    return min((n for n, b in BLOCKS.items() if b >= kept), key=BLOCKS.get)


def plan(args) -> list[Task]:
    """Every task of the protocol, in an order that runs the shared ones first."""
    sd = [sys.executable, "-m", "sdprune"]
    runs = Path(args.out) / "runs"
    data = ["--dataset", "imagefolder", "--data-dir", args.data_dir, "--image-size", str(args.image_size)]
    dev = ["--device", args.device, "--json"]
    train = [*sd, "train", "--epochs", str(args.epochs), "--batch-size", "128", "--workers", "0", *dev]
    keeps = [float(k) for k in args.keeps.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    other = [int(s) for s in args.seeds_other.split(",")] if args.seeds_other else seeds[:1]
    tasks = [Task(f"adopt-{net}", [[*sd, "adopt", str(weights_file(args.weights, net)), *data,
                                    "--out", str(runs / f"have-{net}"), *dev]], info={"net": net})
             for net in BLOCKS]
    have56 = str(runs / "have-resnet56")
    for s in other:
        tasks.append(Task(f"e-s{s}", [[*train, "--init", have56, "--survival", "none", "--seed", str(s),
                                       "--out", str(runs / f"e-s{s}")]], ["adopt-resnet56"],
                          {"arm": "e", "seed": s, "net": "resnet56"}))
    for i, keep in enumerate(keeps):
        kept = math.ceil(keep * BLOCKS["resnet56"] - 1e-9)
        small, k = small_net(kept), f"k{keep:.2f}"
        arm_seeds = seeds if i == 0 else other
        tasks.append(Task(f"a0-{k}", [[*sd, "prune", have56, "--keep-blocks", str(kept), "--heal", "bn",
                                       "--out", str(runs / f"a0-{k}"), *dev]], ["adopt-resnet56"],
                          {"arm": "a0", "keep": keep, "kept": kept, "seed": 0}))
        for s in arm_seeds:
            tasks.append(Task(f"d-{k}-s{s}", [[*train, "--init", str(runs / f"have-{small}"), "--survival", "none",
                                               "--seed", str(s), "--out", str(runs / f"d-{k}-s{s}")]],
                              [f"adopt-{small}"], {"arm": "d", "keep": keep, "seed": s, "net": small}))
            tasks.append(Task(f"a-{k}-s{s}", [[*sd, "prune", have56, "--keep-blocks", str(kept), "--heal", "finetune",
                                               "--finetune-epochs", str(args.epochs), "--seed", str(s),
                                               "--out", str(runs / f"a-{k}-s{s}"), *dev]], ["adopt-resnet56"],
                              {"arm": "a", "keep": keep, "kept": kept, "seed": s}))
            name = f"b-{k}-s{s}{retro_variant(args)}"
            retro = runs / name
            tasks.append(Task(name, [
                [*train, "--init", have56, "--survival", "learned", "--target-keep", repr(kept / BLOCKS["resnet56"]),
                 *retro_flags(args), "--seed", str(s), "--out", str(retro)],
                [*sd, "prune", str(retro), "--keep-blocks", str(kept), "--heal", "bn", "--out", str(retro / "pruned"),
                 *dev]], ["adopt-resnet56"],
                {"arm": "b", "keep": keep, "kept": kept, "seed": s, "variant": retro_variant(args)[1:]}))
        for s in other:  # the iterative choice: one seed (its only randomness is the BN batches)
            prune = [*sd, "prune", have56, "--keep-blocks", str(kept), "--iterative", "--seed", str(s)]
            tasks.append(Task(f"a0i-{k}-s{s}", [[*prune, "--heal", "bn", "--out", str(runs / f"a0i-{k}-s{s}"), *dev]],
                              ["adopt-resnet56"], {"arm": "a0i", "keep": keep, "kept": kept, "seed": s}))
            tasks.append(Task(f"ai-{k}-s{s}", [[*prune, "--heal", "finetune", "--finetune-epochs", str(args.epochs),
                                                "--out", str(runs / f"ai-{k}-s{s}"), *dev]],
                              ["adopt-resnet56"], {"arm": "ai", "keep": keep, "kept": kept, "seed": s}))
            tasks.append(Task(f"ae-{k}-s{s}", [[*sd, "prune", str(runs / f"e-s{s}"), "--keep-blocks", str(kept),
                                                "--heal", "finetune", "--finetune-epochs", str(args.epochs),
                                                "--seed", str(s), "--out", str(runs / f"ae-{k}-s{s}"), *dev]],
                              [f"e-s{s}"], {"arm": "ae", "keep": keep, "kept": kept, "seed": s}))
            tasks.append(Task(f"c-{k}-s{s}", [[*train, "--model", small, *data, "--survival", "none", "--lr", "0.1",
                                               "--lr-schedule", "cosine", "--warmup-epochs", "1", "--seed", str(s),
                                               "--out", str(runs / f"c-{k}-s{s}")]], [],
                              {"arm": "c", "keep": keep, "seed": s, "net": small}))
    wanted = set(args.arms.split(","))
    if "ae" in wanted:  # (ae) prunes (e)'s network: asking for it asks for (e)
        wanted.add("e")
    return [t for t in tasks if t.name.startswith("adopt") or t.info.get("arm") in wanted]


def retro_flags(args) -> list[str]:
    """`sdprune train`'s flags for the retrofit's mechanism, where the command line varies it
    (``best`` is train's default: no flag, so the default arm stays the one already run)."""
    flags = ["--criterion", args.criterion] if args.criterion not in (None, "best") else []
    return flags + (["--anneal-end", f"{args.anneal_end:g}"] if args.anneal_end is not None else [])


def retro_variant(args) -> str:
    """The suffix that keeps a varied retrofit's runs and results apart from the default's: its
    flags' own values, so two variants never share a name."""
    flags = retro_flags(args)
    if not flags:
        return ""
    criterion = flags[flags.index("--criterion") + 1] if "--criterion" in flags else "best"
    return f"-{criterion}" + (f"-end{flags[-1]}" if "--anneal-end" in flags else "")


def weights_file(folder: str, net: str) -> Path:
    found = sorted(Path(folder).glob(f"{net}-*.th"))
    if not found:
        raise SystemExit(f"no {net}-*.th in {folder}")
    return found[0]


def figures(task: Task, outputs: list[dict]) -> dict:
    """What the table needs, from the commands' JSON results."""
    from sdprune.nets.registry import describe_model

    arm, last = task.info.get("arm"), outputs[-1]
    trained = outputs[0].get("run") if arm in ("e", "d", "c", "b") else None
    executed = None  # branches run per step, summed over the epochs (a retrofit's fall as it anneals)
    if trained:
        rows = [json.loads(line) for line in (Path(trained) / "metrics.jsonl").read_text().splitlines() if line]
        executed = sum(r["executed_blocks"] for r in rows)
    if arm in PRUNED:
        return {"test_acc": last["after"]["test"]["acc"], "val_acc": last["after"]["val"]["acc"],
                "unhealed_test": last["unhealed"]["test"]["acc"], "blocks": last["blocks"]["after"],
                "params": last["params"]["after"], "flops": last["flops"]["after"], "removed": last["removed"],
                "block_epochs": executed,
                "phases": last.get("timing")}
    if arm in ("e", "d", "c"):
        described = describe_model(task.info["net"])
        return {"test_acc": last["final"]["test_acc"], "val_acc": last["final"]["val_acc"],
                "blocks": described["blocks"], "params": described["params"], "flops": described["flops"],
                "block_epochs": executed}
    return {"test_acc": last["test_acc"], "val_acc": last["val_acc"]}  # adopt


def run_all(args) -> None:
    run_tasks(plan(args), Path(args.out), args.jobs, args.threads, figures,
              {"jobs": args.jobs, "device": args.device, "epochs": args.epochs})


def report(out: Path) -> str:
    """Markdown tables (one per keep) from the results: mean and range over seeds."""
    rows = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]
    adopted = {r["net"]: r for r in rows if r["task"].startswith("adopt")}
    lines = ["as published on these files (no training): " + ", ".join(
        f"{n} {r['test_acc']:.2f}%" for n, r in sorted(adopted.items()))]
    keeps = sorted({r["keep"] for r in rows if "keep" in r}, reverse=True)
    for keep in keeps:
        lines += ["", f"keep {keep:.2f}", "",
                  "| arm | test acc % (mean, min-max) | val % | seeds | blocks | params | MFLOPs | block-epochs |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for arm in ARMS:
            for variant in sorted({r.get("variant", "") for r in rows if r.get("arm") == arm}):
                group = [r for r in rows if r.get("arm") == arm and r.get("variant", "") == variant
                         and (arm in ("e",) or r.get("keep") == keep)]
                if group:
                    lines.append(_row(arm, variant, group))
    return "\n".join(lines)


def _row(arm: str, variant: str, group: list[dict]) -> str:
    accs, vals = [r["test_acc"] for r in group], [r["val_acc"] for r in group]
    spread = f" ({min(accs):.2f}-{max(accs):.2f})" if len(accs) > 1 else ""
    r0 = group[0]
    epochs = r0["epochs"] if arm not in ("a0", "a0i") else 0
    name = NAMES[arm] + (f" [{variant}]" if variant else "")
    return (f"| {name} | {statistics.mean(accs):.2f}{spread} | {statistics.mean(vals):.2f} | {len(group)} | "
            f"{r0['blocks']} | {r0['params']:,} | {r0['flops'] / 1e6:.1f} | {_block_epochs(r0, epochs)} |")


def _block_epochs(r: dict, epochs: int) -> str:
    arm = r["arm"]
    if arm in ("a0", "a0i"):
        return "0"
    student = r.get("block_epochs")
    if student is None:  # results written before block_epochs was recorded
        student = (r.get("executed_blocks") or r["blocks"]) * epochs if arm != "b" else float("nan")
    teacher = BLOCKS["resnet56"] * epochs if arm in ("a", "ai", "ae", "b") else 0
    teacher += BLOCKS.get(r.get("net", ""), 0) * epochs if arm in ("e", "d") else 0  # distilled from itself
    if arm == "ae":  # (e)'s adaptation first: 27 blocks E epochs, distilled from itself
        student, teacher = student + BLOCKS["resnet56"] * epochs, teacher + BLOCKS["resnet56"] * epochs
    return f"{student:.0f} ({teacher})"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--out", required=True, help="benchmark folder (keep it outside the repository)")
    a("--data-dir", help="the CIFAR-10 JPEG folder (with train/ and test/)")
    a("--weights", default=str(ROOT.parent / "shared" / "data" / "pretrained"), help="folder of resnet*-*.th")
    a("--epochs", type=int, default=3, help="E, for every arm ((ae): E after (e)'s E)")
    a("--image-size", type=int, default=32, help="pixels (32: CIFAR's own; smaller only for a dry run)")
    a("--keeps", default="0.5,0.333", help="fractions of ResNet-56's 27 blocks (rounded up)")
    a("--seeds", default="0,1,2", help="seeds of (a), (b), (d) at the first keep")
    a("--seeds-other", help="seeds of (e), (c), (a0i), (ai), (ae) and every arm at other keeps (default: the first of --seeds)")
    a("--arms", default=",".join(ARMS))
    a("--criterion", choices=RETROFIT_CRITERIA,
      help="(b): the retrofit's step-0 ranking (`train --criterion`; default: train's)")
    a("--anneal-end", type=float,
      help="(b): when the excluded blocks are gone (`train --anneal-end`; default: train's)")
    a("--jobs", type=int, default=1, help="tasks at once")
    a("--threads", type=int, default=1, help="torch threads per task")
    a("--device", default="cpu")
    a("--report", action="store_true", help="print the tables from --out/results and exit")
    args = p.parse_args(argv)
    if args.report:
        print(report(Path(args.out)))
        return
    if args.anneal_end is not None and not 0.0 < args.anneal_end <= 1.0:
        p.error(f"--anneal-end must be in (0, 1], got {args.anneal_end}")
    if not args.data_dir:
        p.error("--data-dir is needed to run")
    run_all(args)
    print(report(Path(args.out)))


if __name__ == "__main__":
    main()
