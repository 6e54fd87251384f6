"""B5: the network you already have — prune it directly, or retrofit it first? (docs: benchmarks B5)

Fashion-MNIST (B2's fixed training subset), one schedule family, several seeds:

  (e) have     a plain CIFAR-style ResNet trained from scratch for N epochs: the network you have;
  (d) small-N  the CIFAR ResNet of the kept depth trained from scratch for N epochs;
  (c) small-E  the same for E = N/5 epochs;
  (a) prune    (e) pruned directly: the criterion best on the validation slice, BN heal, then a
               fine-tune of E epochs distilled from (e) (`sdprune prune --heal finetune`);
  (b) retrofit (e) retrofitted for E epochs (`sdprune train --init (e) --survival learned
               --target-keep K`: the val-best selection at step 0, distilled from (e)), then
               `sdprune prune --keep K` (survival ranking, BN heal).

Reported per arm: test accuracy, training compute in executed block-epochs (the student's,
and the teacher's forward-only passes separately), wall time of that arm's compute in this
process (arms run one after another, never two at once), parameters, FLOPs and ONNX Runtime
latency at batch 1 relative to (e), all networks timed interleaved in one run.
Resumable: each arm is cached as JSON under --out/arms/.

    python tools/bench_retrofit.py --out bench-out/b5 --data-dir /usr/share/datasets/fashion-mnist
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_prune_quality import cached, ensure_registered, scratch_depth, write_subset  # tools/, beside us

from sdprune.data.bundle import data_for_checkpoint
from sdprune.depth.select import target_count
from sdprune.depth.structure import remove_blocks
from sdprune.deploy.export import export_onnx
from sdprune.deploy.latency import bench_onnx
from sdprune.prune.heal import BN_HEAL, HealSpec
from sdprune.prune.pipeline import Budget, cut_and_heal, prune_model, score_blocks
from sdprune.prune.retrofit import best_selection, rank_for_retrofit
from sdprune.train.checkpoint import build_model, load_checkpoint
from sdprune.train.config import TrainConfig, resolve_config
from sdprune.train.evaluate import resolve_device
from sdprune.train.loop import train

FORMAT = 1


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--out", required=True)
    a("--data-dir", help="Fashion-MNIST folder (default: sdprune's usual places)")
    a("--model", default="resnet56", help="the network you have (a CIFAR ResNet)")
    a("--train-images", type=int, default=10000, help="fixed training subset (incl. the 10%% val slice)")
    a("--test-images", type=int, default=5000, help="seeded random part of the test split (0: all)")
    a("--epochs", type=int, default=25, help="N: the training of the network you have (E = N/5)")
    a("--batch-size", type=int, default=128)
    a("--lr", type=float, default=0.1, help="from-scratch peak lr (cosine)")
    a("--keeps", default="0.5,0.25")
    a("--seeds", default="0")
    a("--device", default="auto")
    a("--repeats", type=int, default=200, help="ONNX latency: timed runs per network")
    return p.parse_args(argv)


def block_epochs(run: Path) -> float:
    """Executed blocks per step, summed over the run's epochs (what the student's training computed)."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return sum(r["executed_blocks"] for r in rows)


def train_run(cfg: TrainConfig, **kw) -> tuple[Path, float]:
    """Train (or reuse) a run; returns its checkpoint and the wall seconds this process spent on it."""
    ckpt = Path(cfg.out) / "checkpoint.pt"
    if ckpt.exists() and load_checkpoint(ckpt)["meta"]["epoch"] >= cfg.epochs:
        return ckpt, float("nan")  # trained by an earlier invocation: its wall time is in its arm's JSON
    t0 = time.perf_counter()
    train(cfg, resume=ckpt if ckpt.exists() else None, **kw)
    return ckpt, time.perf_counter() - t0


def scratch(args, root: Path, model: str, epochs: int, seed: int, out: Path) -> dict:
    cfg = TrainConfig(model=model, dataset="fashion-mnist", data_dir=str(root), epochs=epochs,
                      batch_size=args.batch_size, lr=args.lr, lr_schedule="cosine", survival="none",
                      seed=seed, device=args.device, out=str(out))
    ckpt, wall = train_run(cfg)
    meta = load_checkpoint(ckpt)["meta"]
    return {"checkpoint": str(ckpt), "test_acc": meta["metrics"]["test_acc"], "val_acc": meta["metrics"]["val_acc"],
            "block_epochs": block_epochs(out), "teacher_block_epochs": 0.0, "wall_s": wall,
            "blocks": len(meta["blocks"]), "removed": []}


def prune_direct(args, have: Path, keep: float, epochs: float, seed: int) -> dict:
    """(a): the pruning pipeline on the network you have, fine-tune distilled from it."""
    dev = resolve_device(args.device)
    ckpt = load_checkpoint(have)
    full, data = build_model(ckpt).to(dev), data_for_checkpoint(ckpt["meta"])
    t0 = time.perf_counter()
    best, chosen, rows = best_selection(full, data, keep, dev, seed=seed)
    tuned = cut_and_heal(full, chosen.removed, data, HealSpec.of("finetune", epochs), seed, dev)
    wall = time.perf_counter() - t0
    kept = len(tuned.kept)
    return {"criterion": best, "removed": tuned.removed, "test_acc": tuned.after["test"]["acc"],
            "val_acc": tuned.after["val"]["acc"], "block_epochs": kept * epochs,
            "teacher_block_epochs": len(rows) * epochs, "wall_s": wall, "blocks": kept}


def retrofit(args, root: Path, have: Path, keep: float, epochs: int, seed: int, out: Path) -> dict:
    """(b): `sdprune train --init have --survival learned --target-keep keep`, then `sdprune prune`."""
    cfg = resolve_config(None, {"init": str(have), "dataset": "fashion-mnist", "data_dir": str(root),
                                "epochs": epochs, "batch_size": args.batch_size, "survival": "learned",
                                "target_keep": keep, "seed": seed, "device": args.device, "out": str(out)})
    ckpt, wall = train_run(cfg, rank_blocks=rank_for_retrofit)
    dev = resolve_device(args.device)
    loaded = load_checkpoint(ckpt)
    model, data = build_model(loaded).to(dev), data_for_checkpoint(loaded["meta"])
    t0 = time.perf_counter()
    rows = score_blocks(model, data, ["survival"], dev)
    pruned = prune_model(model, rows, data, "survival", Budget(keep), BN_HEAL, seed=seed, device=dev)
    wall += time.perf_counter() - t0
    return {"removed": pruned.removed, "test_acc": pruned.after["test"]["acc"], "val_acc": pruned.after["val"]["acc"],
            "retrofit_test_acc": loaded["meta"]["metrics"]["test_acc"], "block_epochs": block_epochs(out),
            "teacher_block_epochs": len(rows) * epochs, "wall_s": wall, "blocks": len(pruned.kept),
            "config": {k: v for k, v in cfg.to_dict().items() if k in ("lr", "lr_schedule", "warmup_epochs",
                                                                      "distill", "epochs")}}


def costs(have: Path, arms: dict[str, dict], repeats: int) -> dict[str, dict]:
    """Parameters, FLOPs and ONNX latency (batch 1, interleaved, relative to the first) of each arm's network."""
    from sdprune.nets.measure import count_flops, count_params

    ckpt = load_checkpoint(have)
    data = data_for_checkpoint(ckpt["meta"])
    out = {}
    with tempfile.TemporaryDirectory(prefix="sdprune-b5-") as tmp:
        files = []
        for i, (name, arm) in enumerate(arms.items()):
            # costs depend on the architecture only: the unpruned weights stand in for healed ones
            src = load_checkpoint(arm.get("checkpoint", have))
            meta = {**src["meta"], "removed": list(src["meta"].get("removed", [])) + list(arm["removed"])}
            model = remove_blocks(build_model(src), arm["removed"])
            files.append(export_onnx(model, meta, Path(tmp) / str(i), data=data, samples=16)["file"])
            out[name] = {"params": count_params(model), "flops": count_flops(model, tuple(data.input_shape))}
        timing = bench_onnx(files, repeats=repeats, batch_sizes=(1,), warmup=10)
    for (name, _), m in zip(arms.items(), timing["models"]):
        out[name].update(latency_ms=m["latency"]["1"]["p50_ms"], latency_ratio=m["latency"]["1"]["ratio"])
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    root = write_subset(args, out / "data")
    e_epochs = max(1, round(args.epochs / 5))
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        have_dir = out / "runs" / f"have-{args.model}-s{seed}"
        have = cached(out / "arms" / f"have-s{seed}.json",
                      lambda: scratch(args, root, args.model, args.epochs, seed, have_dir))
        have_ckpt = Path(have["checkpoint"])
        total = have["blocks"]
        for keep in [float(k) for k in args.keeps.split(",")]:
            small = ensure_registered(scratch_depth(target_count(total, keep, None)))
            tag = f"k{keep}-s{seed}"
            arms = {"(e) have": have}
            for label, epochs in (("(d) small-N", args.epochs), ("(c) small-E", e_epochs)):
                key = f"{small}-e{epochs}-s{seed}"
                arms[label] = cached(out / "arms" / f"{key}.json",
                                     lambda: scratch(args, root, small, epochs, seed, out / "runs" / key))
            arms["(a) prune"] = cached(out / "arms" / f"prune-{tag}.json",
                                       lambda: prune_direct(args, have_ckpt, keep, e_epochs, seed))
            arms["(b) retrofit"] = cached(out / "arms" / f"retrofit-{tag}.json",
                                          lambda: retrofit(args, root, have_ckpt, keep, e_epochs, seed,
                                                           out / "runs" / f"retrofit-{tag}"))
            measured = cached(out / "arms" / f"costs-{tag}.json", lambda: costs(have_ckpt, arms, args.repeats))
            results.append({"format": FORMAT, "seed": seed, "keep": keep, "small": small, "N": args.epochs,
                            "E": e_epochs, "arms": {k: {**v, **measured[k]} for k, v in arms.items()}})
            print(f"done keep {keep} seed {seed}", file=sys.stderr)
    (out / "B5.json").write_text(json.dumps(results, indent=1))
    table = markdown(results)
    (out / "B5.md").write_text(table)
    print(table)
    return 0


def markdown(results: list[dict]) -> str:
    lines = []
    for keep in sorted({r["keep"] for r in results}, reverse=True):
        group = [r for r in results if r["keep"] == keep]
        first = group[0]
        lines += [f"\n**keep {keep}** (N = {first['N']}, E = {first['E']}, small = {first['small']}, "
                  f"{len(group)} seed(s): mean, min-max)\n",
                  "| arm | test acc % | blocks | block-epochs (teacher fwd) | wall s | params | MFLOPs | latency |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for arm in first["arms"]:
            vals = [r["arms"][arm] for r in group]
            acc = [v["test_acc"] for v in vals]
            mean = sum(acc) / len(acc)
            v0 = vals[0]
            spread = f" ({min(acc):.2f}-{max(acc):.2f})" if len(acc) > 1 else ""
            lines.append(f"| {arm} | {mean:.2f}{spread} | {v0['blocks']} | {v0['block_epochs']:.0f} "
                         f"({v0['teacher_block_epochs']:.0f}) | {v0['wall_s']:.0f} | {v0['params']:,} | "
                         f"{v0['flops'] / 1e6:.1f} | {v0['latency_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
