"""`sdprune prune`: remove the least important residual blocks for real, then heal."""

from __future__ import annotations

import argparse


def add_parser(sub):
    from sdprune.cli.common import add_pruning_args
    from sdprune.choices import CRITERIA

    p = sub.add_parser("prune", help="remove residual blocks and heal the smaller network", description=__doc__)
    a = p.add_argument
    a("checkpoint", nargs="?", help="checkpoint or run folder (default: the newest unpruned run)")
    a("--keep", type=float, help="fraction of the gated blocks to keep, in (0, 1], rounded up to whole blocks "
                                  "(default: no such limit; at least one budget is needed)")
    a("--keep-blocks", type=int, help="number of gated blocks to keep (default: no such limit)")
    a("--max-params", type=_amount, help="parameter budget for the whole network, e.g. 150k (default: no such limit)")
    a("--max-flops", type=_amount, help="FLOP budget per image, e.g. 20M (default: no such limit)")
    a("--criterion", choices=CRITERIA,
      help="how blocks are ranked (default: survival if the run learned it, else ablation)")
    a("--iterative", action="store_true", help="remove one block at a time, re-scoring after each removal")
    add_pruning_args(p)
    a("--out", help="output folder (default <run>/pruned-keepK.KK-CRITERION[-iterative][-finetune]..., where a "
                    "prune made with other settings is refused; --out may replace another prune, never the "
                    "checkpoint being pruned or a training checkpoint)")
    return p


def _amount(text: str) -> float:
    """'150k' -> 150000.0, '2.5M' -> 2500000.0, '1e6' -> 1000000.0."""
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(text[-1:].lower(), 1.0)
    try:
        return float(text[:-1] if scale != 1.0 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 150k or 2.5M, got {text!r}") from None


def run(args, reporter) -> int:
    from sdprune.cli.common import heal_spec
    from sdprune.depth.select import Budget
    from sdprune.prune.pipeline import prune_checkpoint

    budget = Budget(args.keep, args.keep_blocks, args.max_params, args.max_flops, args.keep_stages)
    heal = heal_spec(args)
    s = prune_checkpoint(args.checkpoint, budget, args.criterion, heal, args.iterative, args.seed, args.out,
                         args.device, args.batch_size, args.stats_images, reporter)
    reporter.table(f"pruned {s['model']} by {s['criterion']}{' (iterative)' if s['iterative'] else ''}, "
                   f"heal {s['heal']}", ["network", "blocks", "params", "FLOPs", "val %", "test %"],
                   _rows(s), caption=_caption(s))
    reporter.info(f"wrote {s['checkpoint']}")
    reporter.result(s)
    return 0


def _rows(s: dict) -> list[list]:
    """One row per network measured: the unpruned one both ways, the pruned one per healing step."""
    from sdprune.report import human

    ref, bn = s["reference"], s["bn"]
    full = [s["blocks"]["before"], human(s["params"]["before"]), human(s["flops"]["before"])]
    small = [s["blocks"]["after"], human(s["params"]["after"]), human(s["flops"]["after"])]
    no_bn = ref["statistics"] == "none"  # nothing was re-estimated: no row pretends it was
    steps = [("unpruned, as trained", full, ref["trained"])]
    if not no_bn:
        steps.append(("unpruned, BN re-estimated", full, ref["recalibrated"]))
    steps.append(("pruned, unhealed", small, s["unhealed"]))
    if s["finetune"]:
        steps.append(("pruned, fine-tuned", small, bn["before"] if bn else s["after"]))
    if bn and not no_bn:
        steps.append(("pruned, BN re-estimated", small, bn["after"]))
    marked = {0 if ref["statistics"] in ("trained", "none") else 1,
              len(steps) - (2 if bn and bn["statistics"] == "trained" else 1)}
    return [[name + (" *" if i in marked else ""), *size, f"{m['val']['acc']:.2f}", f"{m['test']['acc']:.2f}"]
            for i, (name, size, m) in enumerate(steps)]


def _caption(s: dict) -> str:
    rule = "; re-estimated BN statistics kept only where they improve val" if s["bn"] else ""
    if s["reference"]["statistics"] == "none" and s["bn"]:
        rule = f"; {s['bn']['note']}"
    return (f"*: the reference (unpruned, healed as the pruned network is) and the result; change from pruning "
            f"(result - reference, negative: accuracy lost): {s['change']['test']:+.2f} test, "
            f"{s['change']['val']:+.2f} val points{rule}; removed: {', '.join(s['removed']) or 'nothing'}")
