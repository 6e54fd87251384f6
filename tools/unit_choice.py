"""Transformers: is the prunable unit the block or each of its two residual branches?

A small ViT (torchvision's ``VisionTransformer`` through ``tv_vit_b_16``'s constructor
arguments) is trained with batch-mode stochastic depth, linear survival down to 0.5, the
gates drawn per branch (``--train-drop branch``, what sdprune and torchvision's Swin do)
or per block (``block``: both branches of a block share one draw). Then, on the trained
network, with no healing (LayerNorm: nothing to re-estimate):

  * drop-one ablation on the validation slice: the loss increase of closing each branch
    (attention, MLP) and each block (both);
  * at the same kept compute: 1, 2, ... half the blocks removed by drop-one rank (``sdprune
    prune --criterion ablation --keep-blocks``, block rows), then branches removed by the
    same rank under that FLOP budget (``--max-flops``, branch rows: at most the same
    compute kept), and each reduced network's test accuracy (units closed: the same
    function as removed).

    python tools/unit_choice.py --dataset digits --epochs 40 --json digits-branch.json
    python tools/unit_choice.py --dataset digits --epochs 60 --lr 3e-3 --train-drop block
    python tools/unit_choice.py --dataset imagefolder --data-dir /tmp/cifar10 --patch 8 --epochs 5

Result (README's table, 2 shared CPU cores, 6 to 18 minutes a run): trained, the two units
tie within a few of the 359 test images at 0.83 and 0.67 of the FLOPs (89.14 / 88.86%,
89.42 / 89.42% after per-block draws; 83.29 / 83.57%, 83.57 / 83.57% after per-branch
draws); undertrained (lr 1e-3, 40 epochs, 59% full) the branch unit led by 1.4 to 2.5
points. The branch is the unit for exactness and granularity, not for accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdprune.data.augment import augment  # noqa: E402
from sdprune.data.bundle import load_data  # noqa: E402
from sdprune.data.images import iterate_batches, normalize  # noqa: E402
from sdprune.depth.gates import GateSampler, gating, step_seed  # noqa: E402
from sdprune.depth.schedule import set_survival, survival_schedule  # noqa: E402
from sdprune.depth.select import select_blocks  # noqa: E402
from sdprune.depth.structure import block_layout, gated_blocks  # noqa: E402
from sdprune.nets import create_model  # noqa: E402
from sdprune.train.evaluate import evaluate  # noqa: E402


def build(args, data):
    c, side, _ = data.input_shape
    torch.manual_seed(args.seed)
    return create_model("tv_vit_b_16", len(data.classes), in_channels=c, image_size=side, patch_size=args.patch,
                        num_layers=args.layers, num_heads=args.heads, hidden_dim=args.dim, mlp_dim=4 * args.dim)


def survival(args) -> list[float]:
    """Linear to --p-last over the units (branch draws) or over the blocks, shared by a block's pair."""
    if args.train_drop == "branch":
        return survival_schedule("linear", 2 * args.layers, args.p_last)
    return [p for p in survival_schedule("linear", args.layers, args.p_last) for _ in range(2)]


def train(model, data, args) -> float:
    units = [b for _, b in gated_blocks(model)]
    set_survival(model, survival(args))
    sampler = GateSampler(model, "batch", seed=args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * math.ceil(len(data.train) / args.batch_size)
    warm = max(1, steps // 20)
    gen = torch.Generator().manual_seed(args.seed)
    step, start = 0, time.time()
    model.train()
    for epoch in range(args.epochs):
        for images, labels in iterate_batches(data.train, args.batch_size, gen, drop_last=True):
            lr = args.lr * min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / steps))
            for group in opt.param_groups:
                group["lr"] = lr
            x = normalize(augment(images, data.augment, gen), data.mean, data.std)
            if args.train_drop == "branch":
                scope = sampler.install(step, len(labels))
            else:
                draw = torch.Generator().manual_seed(step_seed(args.seed, step))
                kept = (torch.rand(args.layers, generator=draw) < torch.tensor(survival(args)[::2])).tolist()
                scope = gating(units, [float(k) for k in kept for _ in range(2)])
            with scope:
                loss = F.cross_entropy(model(x), labels, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        print(f"epoch {epoch + 1}: loss {loss.item():.3f} ({time.time() - start:.0f} s)", file=sys.stderr)
    return time.time() - start


def score(model, split, data, closed=()) -> dict:
    units = gated_blocks(model)
    with gating([b for _, b in units], [0.0 if n in closed else None for n, _ in units]):
        return evaluate(model.eval(), split, data.mean, data.std, batch_size=500)


def measure(model, data, args) -> dict:
    layout = block_layout(model, tuple(data.input_shape))
    total = layout[0]["model_flops"]
    full = {"val": score(model, data.val, data), "test": score(model, data.test, data)}
    branch_rows = [dict(r) for r in layout]
    for r in branch_rows:  # drop-one on the validation slice
        r["delta_loss"] = score(model, data.val, data, {r["name"]})["loss"] - full["val"]["loss"]
    blocks = {}
    for r in branch_rows:
        blocks.setdefault(r["name"].rsplit(".", 1)[0], []).append(r)
    block_rows = []
    for i, (name, pair) in enumerate(blocks.items()):
        closed = {r["name"] for r in pair}
        block_rows.append({"name": name, "stage": 0, "index": i, "position": i, "transition": False,
                           "params": sum(r["params"] for r in pair), "flops": sum(r["flops"] for r in pair),
                           "members": sorted(closed),
                           "delta_loss": score(model, data.val, data, closed)["loss"] - full["val"]["loss"]})
    budgets = []
    for removed_blocks in range(1, args.layers // 2 + 1):  # the block unit's compute levels, to half the depth
        kept = set(select_blocks(block_rows, "ablation", keep_blocks=len(block_rows) - removed_blocks))
        removed = [r for r in block_rows if r["name"] not in kept]
        budget = 1 - sum(r["flops"] for r in removed) / total
        row = {"budget": budget, "block": {"removed": [r["name"] for r in removed], "kept_flops": budget,
                                           "test": score(model, data.test, data, {m for r in removed
                                                                                  for m in r["members"]})}}
        kept = set(select_blocks(branch_rows, "ablation", max_flops=int(budget * total), model_flops=total))
        removed = [r for r in branch_rows if r["name"] not in kept]  # at most the same compute
        row["branch"] = {"removed": [r["name"] for r in removed],
                         "kept_flops": 1 - sum(r["flops"] for r in removed) / total,
                         "test": score(model, data.test, data, {r["name"] for r in removed})}
        budgets.append(row)
        print(f"{removed_blocks} blocks out ({budget:.3f} of the FLOPs): block unit {row['block']['test']['acc']:.2f}%, "
              f"branch unit {row['branch']['test']['acc']:.2f}% ({row['branch']['kept_flops']:.3f}, "
              f"{len(removed)} branches out)", file=sys.stderr)
    return {"full": full, "model_flops": total, "branches": branch_rows, "blocks": block_rows, "budgets": budgets}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir")
    p.add_argument("--image-size", type=int)
    p.add_argument("--patch", type=int, default=2)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--p-last", type=float, default=0.5)
    p.add_argument("--train-drop", choices=("branch", "block"), default="branch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the record here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = load_data(args.dataset, args.data_dir, image_size=args.image_size)
    model = build(args, data)
    seconds = train(model, data, args)
    record = {"args": vars(args), "train_seconds": round(seconds), **measure(model, data, args)}
    print(f"full: val {record['full']['val']['acc']:.2f}%, test {record['full']['test']['acc']:.2f}%",
          file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
