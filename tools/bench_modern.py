"""B7 — what depth removal buys on modern networks (issue 20).

latency: each registry model (default ConvNeXt-T, EfficientNet-B0, Swin-T, ViT-B/16) at
--image-size px with an ImageNet-sized head (--num-classes 1000), full and with keep 0.75 /
0.5 (kept blocks evenly spaced in forward order, every stage keeping one, as `sdprune
prune` requires: ``bench_common.evenly_removed``, B3's rule), each exported to verified
fp32 ONNX (``export_onnx``'s parity gate, on generated images); ONNX Runtime CPU latency at
batch 1 and 32 of a model's files interleaved in one run per thread count and batch size
(``bench_onnx``), as ratios to the full model next to the FLOP ratio. Weights are random
(latency does not depend on them), made to give logits the parity gate can judge: zero
weights filled, BatchNorm statistics taken on the generated images after the removal; a
variant whose largest |logit| stays under MIN_LOGIT_SCALE is refused. Resumable model by
model (--out/results/<model>.json; ONNX files under --out/onnx).

accuracy: CIFAR-sized models of two families (default convnext_cifar and vit_cifar) trained
on the CIFAR-10 JPEG folders with their own stochastic depth ("own": the highest per-block
drop rate the registry builds them with; row mode, as torchvision trains them) and as a
plain twin (drop rate 0, `--survival none`), for the same epoch budget, then swept
(`sdprune sweep --keep 1,0.75,0.5,0.25`): test accuracy per keep, the criterion best on the
validation slice, comparable with B2's ResNet tables. Every arm is the sdprune command lines
a user runs (`train`, then `sweep`), logged under --out/logs; resumable arm by arm
(--out/results/<arm>.json), --jobs arms at once, each with OMP_NUM_THREADS=1. With
--optimizer adamw (and its --weight-decay) the arms are named ``...-adamw`` and reported
apart from the SGD arms.

    python tools/bench_modern.py latency --out ../b7lat --threads 1,2
    python tools/bench_modern.py accuracy --out ../b7acc --data-dir /tmp/data/cifar10 --epochs 15 --jobs 2
    python tools/bench_modern.py accuracy --out ../b7acc --report      # the table, from results/
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from sdprune.choices import OPTIMIZERS  # constants only: no torch at import

from bench_common import MIN_LOGIT_SCALE, Task, evenly_removed, fill_zero_weights, run_tasks  # tools/

LATENCY_MODELS = "tv_convnext_tiny,tv_efficientnet_b0,tv_swin_t,tv_vit_b_16"
ACCURACY_MODELS = "convnext_cifar,vit_cifar"


def measure_model(args, name: str, data, out: Path) -> dict:
    """One model's variants exported and timed (all its files interleaved), as a JSON-able record."""
    import onnxruntime
    import torch

    from sdprune.deploy.export import export_onnx
    from sdprune.deploy.latency import bench_onnx, cpu_name
    from sdprune.depth.structure import gated_blocks, remove_blocks
    from sdprune.nets.registry import create_model
    from sdprune.prune.heal import recalibrate_bn

    load = os.getloadavg()[0]
    # the model's head, not the data's 10 classes, sets the output: the metadata must say so
    meta_data = {**data.meta(), "classes": [f"class{i}" for i in range(args.num_classes)]}
    variants = []
    for keep in args.keeps:
        torch.manual_seed(0)  # the same weights for every variant: pruning only removes blocks
        model = create_model(name, args.num_classes, 3).eval()
        fill_zero_weights(model)  # before removal: every variant keeps the same weights
        names = [n for n, _ in gated_blocks(model)]
        removed = evenly_removed(model, keep, tuple(data.input_shape))
        remove_blocks(model, removed)
        # BatchNorm statistics of the network as exported, as healing takes them after a prune:
        # untouched ones (mean 0, variance 1) shrink a deep network's logits to ~1e-13
        recalibrate_bn(model, data, batches=4, batch_size=16)
        meta = {"model": {"name": name}, "data": meta_data, "blocks": names, "removed": removed}
        t0 = time.perf_counter()
        rec = export_onnx(model, meta, out / "onnx" / name / f"keep{keep:.2f}", samples=args.samples,
                          atol=args.atol, data=data)
        variants.append({"keep": keep, "kept": len(names) - len(removed), "blocks": len(names),
                         "removed": removed, "params": rec["params"], "flops": rec["flops"],
                         "file": rec["file"], "file_bytes": Path(rec["file"]).stat().st_size,
                         "export_s": time.perf_counter() - t0, "exporter": rec["exporter"],
                         "parity": max(r["max_abs_diff"] for r in rec["parity"]["batches"]),
                         "logit_scale": min(r["max_abs_logit"] for r in rec["parity"]["batches"])})
        if variants[-1]["logit_scale"] < MIN_LOGIT_SCALE:
            raise SystemExit(f"{name} keep {keep}: largest |logit| {variants[-1]['logit_scale']:.1e} < "
                             f"{MIN_LOGIT_SCALE:g}: its parity check would be vacuous")
        print(f"{name} keep {keep}: {variants[-1]['kept']}/{len(names)} blocks, parity "
              f"{variants[-1]['parity']:.1e} on logits up to {variants[-1]['logit_scale']:.2g}", flush=True)
        del model
    files = [v["file"] for v in variants]  # the full model first: ratios are to it
    latency: dict[str, dict] = {}
    for threads in args.threads:
        for batch, repeats in ((1, args.repeats_b1), (32, args.repeats_b32)):
            r = bench_onnx(files, threads=threads, warmup=args.warmup, repeats=repeats, batch_sizes=(batch,))
            latency.setdefault(str(threads), {})[str(batch)] = {m["path"]: m["latency"][str(batch)]
                                                                for m in r["models"]}
    return {"model": name, "image_size": args.image_size, "num_classes": args.num_classes, "variants": variants,
            "latency": latency, "warmup": args.warmup, "repeats_b1": args.repeats_b1,
            "repeats_b32": args.repeats_b32, "date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(),
            "cores": os.cpu_count(), "load": [load, os.getloadavg()[0]], "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__}


def latency(args) -> None:
    import torch

    from sdprune.data.bundle import load_data

    # PyTorch only computes the parity logits here; one thread keeps it from fighting
    # ONNX Runtime's pool (and other processes) on a small shared machine (as B3 does).
    torch.set_num_threads(1)
    out = Path(args.out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    data = None
    for name in args.models:
        path = out / "results" / f"{name}.json"
        if path.exists():
            print(f"{name}: done before ({path})", flush=True)
            continue
        if data is None:  # generated images at the benchmark's size: parity inputs only
            data = load_data("synthetic", image_size=args.image_size)
        record = measure_model(args, name, data, out)
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(path)


def latency_report(out: Path) -> str:
    """B3-style markdown, one table per thread count, from --out/results."""
    from sdprune.report import human

    rows = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]
    if not rows:
        return "no results yet"
    r0 = rows[0]
    lines = [f"{r0['date']}; {r0['cpu']}, {r0['cores']} cores; torch {r0['torch']}, onnxruntime "
             f"{r0['onnxruntime']}; input 3x{r0['image_size']}x{r0['image_size']}, random normal; random weights, "
             f"{r0['num_classes']}-class head; fp32 ONNX; ratios are medians of per-round ratios to the model's full "
             f"file, its files interleaved round-robin in one run per thread count and batch size "
             f"({r0['warmup']} warm-up rounds, {r0['repeats_b1']} timed at batch 1, {r0['repeats_b32']} at batch 32); "
             "1-minute load average per model: " + ", ".join(
                 f"{r['model']} {r['load'][0]:.1f} -> {r['load'][1]:.1f}" for r in rows) + "."]
    for threads in r0["latency"]:
        lines += ["", f"ONNX Runtime with {threads} intra-op thread{'s' if threads != '1' else ''}:", "",
                  "| model | keep | blocks | params | FLOPs | FLOP ratio | latency ratio b1 | latency ratio b32 | "
                  "p50 b1 (ms) | p50 b32 (ms) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lat, full = r["latency"].get(threads), r["variants"][0]
            for v in r["variants"] if lat else []:
                b1, b32 = lat["1"][v["file"]], lat["32"][v["file"]]
                lines.append(f"| {r['model']} | {v['keep']} | {v['kept']}/{v['blocks']} | {human(v['params'])} | "
                             f"{human(v['flops'])} | {v['flops'] / full['flops']:.3f} | {b1['ratio']:.3f} | "
                             f"{b32['ratio']:.3f} | {b1['p50_ms']:.2f} | {b32['p50_ms']:.1f} |")
    return "\n".join(lines)


def own_drop_rate(model: str) -> float:
    """The highest per-block drop rate the registry builds ``model`` with (its prior survivals)."""
    from sdprune.depth.structure import gated_blocks
    from sdprune.nets.registry import create_model

    rate = 1.0 - min(float(b.survival) for _, b in gated_blocks(create_model(model, 10)))
    if rate <= 0:
        raise SystemExit(f"{model} is built without stochastic depth: give its drop rate (--drop-rates 0.1,0)")
    return round(rate, 6)


def plan(args) -> list[Task]:
    """One arm per model, drop rate and seed: `sdprune train`, then `sdprune sweep` of the run."""
    sd = [sys.executable, "-m", "sdprune"]
    runs = Path(args.out) / "runs"
    data = ["--dataset", args.dataset] + (["--data-dir", args.data_dir, "--image-size", str(args.image_size)]
                                          if args.dataset == "imagefolder" else [])
    sweep_opts = [*(["--criteria", args.criteria] if args.criteria else []),
                  *(["--stats-images", str(args.stats_images)] if args.stats_images else []),
                  *(["--allow-empty-stage"] if args.allow_empty_stage else [])]
    optimizer = [] if args.optimizer == "sgd" and args.weight_decay is None else [
        "--optimizer", args.optimizer, *(["--weight-decay", repr(args.weight_decay)] if args.weight_decay is not None
                                         else [])]
    tasks = []
    for model in args.models:
        for rate in args.drop_rates:
            drop = own_drop_rate(model) if rate == "own" else float(rate)
            p_last = repr(round(1 - drop, 6))  # p_L is the last block's survival, 1 - its drop rate
            survival = (["--survival", "linear", "--p-last", p_last, "--drop-mode", args.drop_mode] if drop > 0
                        else ["--survival", "none"])  # the plain twin
            for seed in args.seeds:
                name = f"{model}-d{drop:g}-s{seed}" + ("" if args.optimizer == "sgd" else f"-{args.optimizer}")
                run = runs / name
                train = [*sd, "train", "--model", model, *data, *survival, "--epochs", str(args.epochs),
                         "--batch-size", str(args.batch_size), "--lr", repr(args.lr), "--lr-schedule", "cosine",
                         *optimizer,
                         "--warmup-epochs", repr(args.warmup_epochs), "--seed", str(seed), "--workers", "0",
                         "--device", args.device, "--json", "--out", str(run)]
                sweep = [*sd, "sweep", str(run), "--keep", args.keeps, "--no-onnx", *sweep_opts, "--seed", str(seed),
                         "--device", args.device, "--json"]
                tasks.append(Task(name, [train, sweep], info={"model": model, "drop": drop, "seed": seed,
                                                              "optimizer": args.optimizer}))
    return tasks


def arm_figures(task: Task, outputs: list[dict]) -> dict:
    """Full-depth accuracy, and per keep the point whose criterion is best on validation."""
    trained, swept = outputs
    keeps: dict[str, dict] = {}
    for p in swept["points"]:  # the sweep's criteria in its order: ties go to the first
        best = keeps.get(str(p["keep"]))
        if best is None or p["val_acc"] > best["val_acc"]:
            keeps[str(p["keep"])] = {k: p[k] for k in ("criterion", "blocks", "val_acc", "test_acc", "params",
                                                       "flops")}
    return {"test_acc": trained["final"]["test_acc"], "blocks": trained["blocks"],
            "executed_blocks": trained["final"].get("executed_blocks"), "heal": swept["heal"],
            "unpruned": swept["unpruned"], "keeps": keeps,
            "points": [{k: p[k] for k in ("criterion", "keep", "blocks", "val_acc", "test_acc")}
                       for p in swept["points"]]}


def accuracy_report(out: Path) -> str:
    """Test accuracy per keep (best criterion on val), mean over seeds, per model and drop rate."""
    rows = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]
    if not rows:
        return "no results yet"
    keeps = sorted({k for r in rows for k in r["keeps"]}, key=float, reverse=True)
    lines = [f"epochs {rows[0]['epochs']}, {rows[0]['dataset']}; test %, mean (min-max) over seeds; each cell: "
             "the criterion best on the validation slice (its name), after the sweep's healing",
             "", "| model | drop rate | seeds | as trained | " + " | ".join(f"keep {k}" for k in keeps) + " |",
             "|---|---|---|---|" + "---|" * len(keeps)]
    def arm(r: dict) -> tuple[str, str, float]:
        return r["model"], r.get("optimizer", "sgd"), r["drop"]  # older results: SGD

    for model, opt, drop in sorted({arm(r) for r in rows}, key=lambda a: (a[0], a[1] != "sgd", a[1], -a[2])):
        group = [r for r in rows if arm(r) == (model, opt, drop)]
        cells = []
        for k in keeps:
            pts = [r["keeps"][k] for r in group if k in r["keeps"]]
            crits = sorted({p["criterion"] for p in pts})
            cells.append(f"{spread([p['test_acc'] for p in pts])} ({pts[0]['blocks']}/{group[0]['blocks']}, "
                         f"{'/'.join(crits)})" if pts else "-")
        label = model if opt == "sgd" else f"{model} ({opt})"
        lines.append(f"| {label} | {drop:g}{' (plain)' if drop == 0 else ''} | {len(group)} | "
                     f"{spread([r['test_acc'] for r in group])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:.2f}" + (f" ({min(values):.2f}-{max(values):.2f})" if len(values) > 1 else "")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="part", required=True)
    lat = sub.add_parser("latency", help="ONNX Runtime latency and FLOPs against keep")
    acc = sub.add_parser("accuracy", help="train with and without stochastic depth, then sweep")
    for q in (lat, acc):
        q.add_argument("--out", required=True, help="benchmark folder (keep it outside the repository)")
        q.add_argument("--report", action="store_true", help="print the table from --out/results and exit")
    a = lat.add_argument
    a("--models", default=LATENCY_MODELS, help=f"registry names (default {LATENCY_MODELS})")
    a("--keeps", default="1.0,0.75,0.5", help="kept fractions; 1.0 is always first (ratios are to it)")
    a("--image-size", type=int, default=224)
    a("--num-classes", type=int, default=1000, help="head size (default ImageNet's 1000)")
    a("--threads", default="1,2", help="comma-separated ONNX Runtime thread counts, one interleaved run each")
    a("--warmup", type=int, default=2)
    a("--repeats-b1", type=int, default=50)
    a("--repeats-b32", type=int, default=10)
    a("--samples", type=int, default=16, help="generated images the ONNX parity gate checks")
    a("--atol", type=float, default=1e-4, help="parity gate: max |logit diff| (default 1e-4)")
    a = acc.add_argument
    a("--models", default=ACCURACY_MODELS, help=f"registry names (default {ACCURACY_MODELS})")
    a("--drop-rates", default="own,0",
      help="the last block's drop rate of each arm (p_L = 1 - rate); own: the model's own; 0: the plain twin")
    a("--drop-mode", default="row", help="row (torchvision's) | batch (skips the branch's compute)")
    a("--seeds", default="0")
    a("--epochs", type=int, default=15, help="the budget of every arm")
    a("--dataset", default="imagefolder")
    a("--data-dir", help="the CIFAR-10 JPEG folder (with train/ and test/)")
    a("--image-size", type=int, default=32)
    a("--batch-size", type=int, default=128)
    a("--lr", type=float, default=0.05)
    a("--optimizer", choices=OPTIMIZERS, default="sgd", help="train's optimizer (default sgd)")
    a("--weight-decay", type=float, help="train's weight decay (default: train's own, 1e-4)")
    a("--warmup-epochs", type=float, default=1.0)
    a("--keeps", default="1,0.75,0.5,0.25", help="sweep's kept fractions")
    a("--criteria", help="sweep's criteria (default: the sweep's own)")
    a("--stats-images", help="sweep: score on N validation images, or all (default: sweep's own, 1000)")
    a("--allow-empty-stage", action="store_true",
      help="sweep: let a stage lose every block (ConvNeXt's 4 stages cannot keep one each at 3 of 12 blocks)")
    a("--jobs", type=int, default=1, help="arms at once")
    a("--device", default="cpu")
    a("--dry-run", action="store_true", help="print every arm's command lines and exit")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.report:
        print(latency_report(out) if args.part == "latency" else accuracy_report(out))
        return
    args.models = [m for m in args.models.split(",") if m]
    if args.part == "latency":
        args.keeps = [1.0] + [k for k in map(float, args.keeps.split(",")) if k != 1.0]
        args.threads = [int(t) for t in args.threads.split(",") if t]
        latency(args)
        print(latency_report(out))
        return
    if args.dataset == "imagefolder" and not args.data_dir:
        p.error("--data-dir is needed for --dataset imagefolder")
    args.drop_rates = [r for r in args.drop_rates.split(",") if r]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.dry_run:
        print("\n".join(f"{t.name}:\n  " + "\n  ".join(" ".join(c) for c in t.commands) for t in plan(args)))
        return
    run_tasks(plan(args), out, args.jobs, 1, arm_figures,
              {"epochs": args.epochs, "dataset": args.dataset, "drop_mode": args.drop_mode, "device": args.device})
    print(accuracy_report(out))


if __name__ == "__main__":
    main()
