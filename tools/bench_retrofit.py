"""B5: the network you already have — prune it directly, or retrofit it first? (docs: benchmarks B5)

Fashion-MNIST (B2's fixed training subset), one schedule family, several seeds:

  (e) have     a plain CIFAR-style (or torchvision) ResNet trained from scratch for N epochs: the network
               you have;
  (d) small-N  the CIFAR ResNet of the kept depth trained from scratch for N epochs;
  (c) small-E  the same for E = N/5 epochs;
  (a) prune    (e) pruned directly: the criterion best on the validation slice, BN heal, then a
               fine-tune of E epochs distilled from (e) (`sdprune prune --heal finetune`);
  (b) retrofit (e) retrofitted for E epochs (`sdprune train --init (e) --survival learned
               --target-keep K`: the val-best selection at step 0, distilled from (e)), then
               `sdprune prune --keep K` (survival ranking, BN heal; its wall time includes what
               `sdprune prune` also measures: the unpruned network's reference scores).

Reported per arm: test accuracy, training compute in executed block-epochs (the student's,
and the teacher's forward-only passes separately), wall time of that arm's compute in this
process (arms run one after another, never two at once), parameters, FLOPs and ONNX Runtime
latency at batch 1 relative to (e), all networks timed interleaved in one run.
Resumable: each arm is cached as JSON under --out/arms/.

With ``--model tv_resnet18`` (or another torchvision ResNet) the same protocol runs on an
RGB image folder of the subset upscaled to --image-size, the network you have is handed to
the retrofit as a torchvision state dict, and the pruned retrofit is exported to int8 ONNX
and scored by ONNX Runtime (tools/b5_torchvision.py).

    python tools/bench_retrofit.py --out bench-out/b5 --data-dir /usr/share/datasets/fashion-mnist
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import b5_torchvision as tv  # tools/, beside us
from bench_prune_quality import cached, ensure_registered, scratch_depth, write_subset

from sdprune.data.bundle import data_for_checkpoint
from sdprune.depth.select import Budget, target_count
from sdprune.depth.structure import remove_blocks
from sdprune.deploy.export import export_onnx
from sdprune.deploy.latency import bench_onnx
from sdprune.nets.registry import describe_model
from sdprune.nets.torchvision_nets import TORCHVISION_ARCHS
from sdprune.prune.heal import BN_HEAL, HealSpec
from sdprune.prune.pipeline import cut_and_heal, prune_checkpoint
from sdprune.prune.retrofit import best_selection, rank_for_retrofit
from sdprune.train.checkpoint import build_model, load_checkpoint
from sdprune.train.config import TrainConfig, resolve_config
from sdprune.train.evaluate import resolve_device
from sdprune.train.loop import train

FORMAT = 2  # 2: from-scratch warm-up, (b) pruned by prune_checkpoint, the torchvision path
TV_MODELS = ("tv_resnet18", "tv_resnet34")  # BasicBlock ResNets: their small baselines are BasicBlock ResNets too


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--out", required=True)
    a("--data-dir", help="Fashion-MNIST folder (default: sdprune's usual places)")
    a("--model", default="resnet56", help="the network you have: a CIFAR ResNet, or tv_resnet18 / tv_resnet34")
    a("--image-size", type=int, default=64, help="torchvision path: side of the upscaled images, pixels")
    a("--train-images", type=int, default=10000, help="fixed training subset (incl. the 10%% val slice)")
    a("--test-images", type=int, default=5000, help="seeded random part of the test split (0: all)")
    a("--epochs", type=int, default=25, help="N: the training of the network you have (E = N/5)")
    a("--batch-size", type=int, default=128)
    a("--lr", type=float, default=0.1, help="from-scratch peak lr (cosine)")
    a("--warmup-epochs", type=float, default=1.0,
      help="from-scratch linear warm-up (without it ResNet-56 diverges in its first epoch at lr 0.1)")
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


def data_args(args: argparse.Namespace, root: Path) -> dict:
    """The training data every arm reads: the idx subset, or (torchvision path) its image folder,
    always decoded into memory (streaming would switch to random-resized-crop augmentation)."""
    if is_tv(args):
        return {"dataset": "imagefolder", "data_dir": str(root), "image_size": args.image_size, "data_mode": "memory"}
    return {"dataset": "fashion-mnist", "data_dir": str(root)}


def is_tv(args: argparse.Namespace) -> bool:
    """Whether the network you have is a torchvision ResNet (the image-folder path)."""
    return args.model in TV_MODELS


def check_settings(args: argparse.Namespace, out: Path) -> None:
    """Refuse an --out whose cached arms were made with other settings (they would be mixed silently)."""
    if args.model in TORCHVISION_ARCHS and not is_tv(args):
        raise SystemExit(f"--model {args.model}: the torchvision path takes {' or '.join(TV_MODELS)}")
    if is_tv(args):
        for keep in [float(k) for k in args.keeps.split(",")]:
            if target_count(describe_model(args.model)["blocks"], keep, None) < tv.TV_STAGES:
                raise SystemExit(f"--keeps {keep}: a {args.model} keeps at least one block in each of its "
                                 f"{tv.TV_STAGES} stages")
    settings = {"format": FORMAT, **{k: getattr(args, k) for k in ("model", "train_images", "test_images", "epochs",
                                                                    "batch_size", "lr", "warmup_epochs")},
                **({"image_size": args.image_size} if is_tv(args) else {})}
    marker = out / "settings.json"
    if marker.exists() and json.loads(marker.read_text()) != settings:
        raise SystemExit(f"{out} holds arms made with {marker.read_text().strip()}; use another --out")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(settings))


def scratch(args, root: Path, model: str, epochs: int, seed: int, out: Path, init: Path | None = None) -> dict:
    """A network trained from random weights (``init``: given as a fresh torchvision file, undistilled)."""
    cfg = TrainConfig(model=model, **data_args(args, root), epochs=epochs, batch_size=args.batch_size, lr=args.lr,
                      lr_schedule="cosine", warmup_epochs=args.warmup_epochs, survival="none", seed=seed,
                      device=args.device, out=str(out), **({"init": str(init.resolve()), "distill": 0.0} if init else {}))
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
    cfg = resolve_config(None, {"init": str(have), **data_args(args, root), "epochs": epochs,
                                "batch_size": args.batch_size, "survival": "learned", "target_keep": keep,
                                "seed": seed, "device": args.device, "out": str(out)})
    ckpt, wall = train_run(cfg, rank_blocks=rank_for_retrofit)
    t0 = time.perf_counter()
    pruned = prune_checkpoint(ckpt, Budget(keep), "survival", BN_HEAL, seed=seed, device=args.device)
    wall += time.perf_counter() - t0
    loaded = load_checkpoint(ckpt)
    return {"removed": pruned["removed"], "test_acc": pruned["after"]["test"]["acc"],
            "val_acc": pruned["after"]["val"]["acc"], "pruned": pruned["checkpoint"],
            "retrofit_test_acc": loaded["meta"]["metrics"]["test_acc"], "block_epochs": block_epochs(out),
            "teacher_block_epochs": len(loaded["meta"]["blocks"]) * epochs, "wall_s": wall,
            "blocks": len(pruned["kept"]),
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
            # Only timed here: the bound is loose because an untrained-looking small arm's logits can be
            # large (a 5-epoch smoke run's tv_resnet10 differed by 3.7e-4 at logits of ~100).
            files.append(export_onnx(model, meta, Path(tmp) / str(i), data=data, samples=16, atol=1e-2)["file"])
            out[name] = {"params": count_params(model), "flops": count_flops(model, tuple(data.input_shape))}
        timing = bench_onnx(files, repeats=repeats, batch_sizes=(1,), warmup=10)
    for (name, _), m in zip(arms.items(), timing["models"]):
        out[name].update(latency_ms=m["latency"]["1"]["p50_ms"], latency_ratio=m["latency"]["1"]["ratio"])
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    check_settings(args, out)
    root = write_subset(args, out / "data")
    if is_tv(args):
        root = tv.write_folder(root, out / "data" / f"folder{args.image_size}", args.image_size)
    e_epochs = max(1, round(args.epochs / 5))
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        have_dir = out / "runs" / f"have-{args.model}-s{seed}"
        init = (tv.fresh_state_dict(TORCHVISION_ARCHS[args.model], 10, seed, out / "runs" / f"fresh-s{seed}.pth")
                if is_tv(args) else None)
        have = cached(out / "arms" / f"have-s{seed}.json",
                      lambda: scratch(args, root, args.model, args.epochs, seed, have_dir, init))
        have_ckpt = Path(have["checkpoint"])
        # what the retrofit starts from: the checkpoint, or (torchvision path) the state dict a user brings
        have_file = (tv.have_state_dict(have_ckpt, TORCHVISION_ARCHS[args.model], out / "runs" / f"have-s{seed}.pth")
                     if is_tv(args) else have_ckpt)
        total = have["blocks"]
        for keep in [float(k) for k in args.keeps.split(",")]:
            kept = target_count(total, keep, None)
            small = (tv.ensure_tv_registered(tv.tv_layers(kept)) if is_tv(args)
                     else ensure_registered(scratch_depth(kept)))
            tag = f"k{keep}-s{seed}"
            arms = {"(e) have": have}
            for label, epochs in (("(d) small-N", args.epochs), ("(c) small-E", e_epochs)):
                key = f"{small}-e{epochs}-s{seed}"
                arms[label] = cached(out / "arms" / f"{key}.json",
                                     lambda: scratch(args, root, small, epochs, seed, out / "runs" / key))
            arms["(a) prune"] = cached(out / "arms" / f"prune-{tag}.json",
                                       lambda: prune_direct(args, have_ckpt, keep, e_epochs, seed))
            arms["(b) retrofit"] = cached(out / "arms" / f"retrofit-{tag}.json",
                                          lambda: retrofit(args, root, have_file, keep, e_epochs, seed,
                                                           out / "runs" / f"retrofit-{tag}"))
            measured = cached(out / "arms" / f"costs-{tag}.json", lambda: costs(have_ckpt, arms, args.repeats))
            row = {"format": FORMAT, "seed": seed, "keep": keep, "small": small, "N": args.epochs,
                   "E": e_epochs, "arms": {k: {**v, **measured[k]} for k, v in arms.items()}}
            if is_tv(args):
                pruned = Path(arms["(b) retrofit"]["pruned"])
                row["deploy"] = cached(out / "arms" / f"deploy-{tag}.json",
                                       lambda: tv.deploy(pruned, pruned.parent / "export", root))
            results.append(row)
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
                  "| arm | test acc % | blocks | block-epochs (teacher fwd) | wall s (median) | params | MFLOPs | latency |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for arm in first["arms"]:
            vals = [r["arms"][arm] for r in group]
            acc = [v["test_acc"] for v in vals]
            mean = sum(acc) / len(acc)
            v0 = vals[0]
            spread = f" ({min(acc):.2f}-{max(acc):.2f})" if len(acc) > 1 else ""
            lines.append(f"| {arm} | {mean:.2f}{spread} | {v0['blocks']} | {v0['block_epochs']:.0f} "
                         f"({v0['teacher_block_epochs']:.0f}) | {statistics.median(v['wall_s'] for v in vals):.0f} | "
                         f"{v0['params']:,} | "
                         f"{v0['flops'] / 1e6:.1f} | {v0['latency_ratio']:.2f} |")
        for r in group:
            if "deploy" in r:
                d = r["deploy"]
                lines.append(f"\n(b) deployed, seed {r['seed']} (ONNX Runtime, test split): fp32 "
                             f"{d['model.onnx']['test_acc']:.2f}% ({d['model.onnx']['bytes'] / 1e6:.2f} MB), int8 "
                             f"{d['model.int8.onnx']['test_acc']:.2f}% ({d['model.int8.onnx']['bytes'] / 1e6:.2f} MB), "
                             f"int8 top-1 agreement with fp32 {d['int8']['top1_agreement']:.2f}%")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
