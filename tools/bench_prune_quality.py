"""B2: what pruning costs in accuracy (docs: benchmarks protocol B2).

Fashion-MNIST (a fixed training subset, the full test split or a seeded random part), a CIFAR-style
ResNet, one schedule for every arm. Arms: plain, linear stochastic depth, learned
survival, and learned prune-aware for keep 0.5 ("aware"), each over several seeds. For each
trained network: full-depth accuracy (as trained, BN re-estimated, and healed like the
pruned networks: the reference), then keep 0.75 / 0.5 / 0.25 chosen by every criterion on
the validation slice, unhealed, BN re-estimated, BN-healed (re-estimated statistics kept
only where they improve validation) and fine-tuned (distilled) for one epoch (by default
only the criterion that is best on validation, per keep), all by `sdprune prune`'s
pipeline (sdprune.prune.pipeline). Baseline: the CIFAR ResNet whose blocks per stage come
closest to the kept count, trained from scratch with the same schedule.

Resumable: every arm (one training and all its pruning) is cached as JSON under
--out/arms/; rerun the same command to finish an interrupted protocol.

    python tools/bench_prune_quality.py --out bench/b2 --device auto
    tools/run_b2_parallel.sh bench-out/b2 --train-images 20000 --epochs 15   # many cores + GPU
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from b2_report import markdown  # tools/, beside this script

from sdprune.data.bundle import data_for_checkpoint
from sdprune.choices import CRITERIA
from sdprune.depth.select import Budget, check_criterion, check_keep, target_count
from sdprune.errors import SdpruneError
from sdprune.prune.heal import HealSpec
from sdprune.prune.pipeline import cut_and_heal, prune_model, reference, score_blocks
from sdprune.train.checkpoint import build_model, load_checkpoint, write_json
from sdprune.train.config import TrainConfig
from sdprune.train.loop import train

# arm -> (survival schedule, prune-aware target keep)
ARMS = {"plain": ("none", None), "linear": ("linear", None), "learned": ("learned", None),
        "aware": ("learned", 0.5)}
# of an arm's JSON: 2 = reference healed like the pruned networks, BN kept where it helps val; 3 = compute as
# executed blocks; 4 = each prune's change from pruning as the pipeline records it, BN "statistics" named so
FORMAT = 4


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--out", required=True, help="folder for data subset, runs, per-arm JSON and the table")
    a("--data-dir", help="Fashion-MNIST folder (default: sdprune's usual places)")
    a("--model", default="resnet32")
    a("--train-images", type=int, default=10000, help="fixed training subset (incl. the 10%% val slice)")
    a("--test-images", type=int, default=0, help="a seeded random subset of the test split (0: all 10,000)")
    a("--epochs", type=int, default=6)
    a("--batch-size", type=int, default=128)
    a("--lr", type=float, default=0.1)
    a("--seeds", default="0,1,2")
    a("--arms", default="plain,linear,learned,aware",
      help="plain, linear, learned, aware (learned, prune-aware with --target-keep 0.5)")
    a("--no-scratch", dest="scratch", action="store_false", help="skip the from-scratch baselines")
    a("--keeps", default="0.75,0.5,0.25")
    a("--criteria", default=",".join(CRITERIA))
    a("--finetune-epochs", type=float, default=1.0)
    a("--finetune", choices=["best", "all", "none"], default="best",
      help="fine-tune the val-best criterion per keep (default), every criterion, or none")
    a("--device", default="auto")
    a("--threads", type=int, help="torch CPU threads")
    return p.parse_args(argv)


def check_args(args) -> None:
    """Refuse arms, criteria, keeps or a fine-tune no run can use, before anything is trained."""
    unknown = [a for a in args.arms.split(",") if a and a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm {unknown[0]!r}; choose from {', '.join(ARMS)}")
    try:
        for c in args.criteria.split(","):
            check_criterion(c)
        for k in args.keeps.split(","):
            check_keep(float(k), None)
        if args.finetune != "none":
            HealSpec.of("finetune", args.finetune_epochs)
        if args.test_images < 0:
            raise SdpruneError(f"--test-images must be >= 0, got {args.test_images}")
    except (SdpruneError, ValueError) as err:
        raise SystemExit(str(err)) from None


def write_subset(args, root: Path) -> Path:
    """The fixed subset as idx files torchvision reads (seeded, the same for every arm)."""
    from sdprune.data.readers import load_splits

    spec = {"train_images": args.train_images, "test_images": args.test_images, "seed": 0}
    if args.test_images:  # (once the first N test images: a subset that says how it was drawn is another one)
        spec["test_draw"] = "seeded random"
    marker = root / "subset.json"
    if marker.exists():
        if json.loads(marker.read_text()) != spec:
            raise SystemExit(f"{root} holds another subset {marker.read_text().strip()}; use another --out")
        return root
    train_set, test_set, _, _ = load_splits("fashion-mnist", args.data_dir, False, None)
    train_set = train_set.sample(args.train_images, 0)
    if args.test_images:
        test_set = test_set.sample(args.test_images, 0)
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, s in (("train", train_set), ("t10k", test_set)):
        n, _, h, w = s.images.shape
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, h, w)
                                                         + s.images.numpy().tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n)
                                                         + s.labels.to(torch.uint8).numpy().tobytes())
    write_json(marker, spec)
    return root


def config(args, data_root: Path, model: str, arm: str, seed: int, out: Path) -> TrainConfig:
    survival, target_keep = ARMS[arm]
    return TrainConfig(model=model, dataset="fashion-mnist", data_dir=str(data_root), epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, lr_schedule="cosine", survival=survival,
                       target_keep=target_keep, seed=seed, device=args.device, out=str(out))


def trained(cfg: TrainConfig) -> tuple[Path, float]:
    """Train (or resume, or reuse) a run; returns its checkpoint and its executed blocks per step.

    Compute is reported as executed blocks (what stochastic depth saves, whatever the
    device), never as wall time: the protocol runs arms in parallel processes that share
    one device (tools/run_b2_parallel.sh), so their clocks measure each other. B1 times steps.
    """
    run = Path(cfg.out)
    ckpt = run / "checkpoint.pt"
    if not (ckpt.exists() and load_checkpoint(ckpt)["meta"]["epoch"] >= cfg.epochs):
        ckpt = Path(train(cfg, resume=ckpt if ckpt.exists() else None)["checkpoint"])
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return ckpt, sum(r["executed_blocks"] for r in rows) / len(rows)


def prune_arm(args, ckpt_path: Path, seed: int) -> dict:
    """Every keep x criterion x healing stage for one trained network (`sdprune prune`'s pipeline)."""
    ckpt = load_checkpoint(ckpt_path)
    from sdprune.train.evaluate import resolve_device

    dev = resolve_device(args.device)
    full = build_model(ckpt).to(dev)
    data = data_for_checkpoint(ckpt["meta"])
    learned = ckpt["meta"]["config"]["survival"] == "learned"
    criteria = [c for c in args.criteria.split(",") if c != "survival" or learned]
    t0 = time.perf_counter()
    rows = score_blocks(full, data, ["ablation", "influence", "norm"], dev)  # every statistic
    stats_s = time.perf_counter() - t0
    bn = HealSpec.of("bn")
    tuned = HealSpec.of("finetune", args.finetune_epochs) if args.finetune != "none" else None
    ref = reference(full, data, bn, seed, dev)
    result = {"format": FORMAT, "reference": ref.record(), "stats_s": stats_s, "blocks": len(rows), "keeps": {}}
    for keep in [float(k) for k in args.keeps.split(",")]:
        per = {}
        for criterion in criteria:
            healed = prune_model(full, rows, data, criterion, Budget(keep), bn, seed=seed, device=dev).record(ref)
            per[criterion] = {"removed": healed["removed"], "unhealed": healed["unhealed"],
                              "recalibrated": healed["bn"]["after"], "statistics": healed["bn"]["statistics"],
                              "bn": healed["after"], "change": healed["change"]}
        best = max(per, key=lambda c: per[c]["bn"]["val"]["acc"])
        for criterion, entry in per.items():
            if args.finetune == "all" or (args.finetune == "best" and criterion == best):
                # the same blocks, fine-tuned: chosen once, by the criterion on the validation slice
                ft = cut_and_heal(full, entry["removed"], data, tuned, seed, dev).record(ref)
                entry["finetune"], entry["finetune_change"] = ft["after"], ft["change"]
        result["keeps"][str(keep)] = {"kept": target_count(len(rows), keep, None), "best": best, "criteria": per}
    return result


def scratch_depth(kept: int) -> int:
    """Depth 6n + 2 of the CIFAR ResNet whose 3n blocks come closest to ``kept`` (ties: deeper)."""
    n = min(range(1, kept + 2), key=lambda n: (abs(3 * n - kept), -n))
    return 6 * n + 2


def ensure_registered(depth: int) -> str:
    """Register resnet<depth> for this process if sdprune does not ship that depth."""
    from sdprune.nets.cifar_resnet import CifarResNet
    from sdprune.nets.registry import list_models, register

    name = f"resnet{depth}"
    if name not in list_models():
        register(name, (3, 32, 32), f"CIFAR ResNet depth {depth} (benchmark baseline)")(
            lambda num_classes, in_channels, **kw: CifarResNet(depth, num_classes, in_channels, **kw))
    return name


def cached(path: Path, make, valid=lambda value: True) -> dict:
    """``make()``'s value, computed once and kept as JSON at ``path`` (redone if not ``valid``)."""
    if path.exists():
        value = json.loads(path.read_text())
        if valid(value):
            return value
    value = make()
    write_json(path, value)
    return value


def main(argv=None) -> int:
    args = parse_args(argv)
    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    data_root = write_subset(args, out / "data")
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = [a for a in args.arms.split(",") if a]
    results: dict[str, list[dict]] = {}
    for arm in arms:
        for seed in seeds:
            key = f"{arm}-s{seed}"

            def run_arm() -> dict:
                ckpt, executed = trained(config(args, data_root, args.model, arm, seed, out / "runs" / key))
                return {"arm": arm, "seed": seed, "executed_blocks": executed, **prune_arm(args, ckpt, seed)}
            # an arm pruned by an older version is pruned again (its training is reused)
            results.setdefault(arm, []).append(cached(out / "arms" / f"{key}.json", run_arm,
                                                      lambda value: value.get("format") == FORMAT))
            print(f"done {key}", file=sys.stderr)
    from sdprune.depth.structure import gated_blocks
    from sdprune.nets.registry import create_model

    baselines: dict[str, list[dict]] = {}
    total = len(gated_blocks(create_model(args.model, 10, 1)))
    for keep in (args.keeps.split(",") if args.scratch else []):
        keep = str(float(keep))
        name = ensure_registered(scratch_depth(target_count(total, float(keep), None)))
        for seed in seeds:
            key = f"scratch-{name}-s{seed}"

            def run_scratch() -> dict:
                ckpt, executed = trained(config(args, data_root, name, "plain", seed, out / "runs" / key))
                meta = load_checkpoint(ckpt)["meta"]
                return {"model": name, "seed": seed, "executed_blocks": executed, "blocks": len(meta["blocks"]),
                        "test_acc": meta["metrics"]["test_acc"], "val_acc": meta["metrics"]["val_acc"]}
            baselines.setdefault(keep, []).append(cached(out / "arms" / f"{key}.json", run_scratch))
    table = markdown(args, results, baselines)
    (out / "B2.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
