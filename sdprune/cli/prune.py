"""`sdprune prune`: remove the least important residual blocks for real, then heal."""

from __future__ import annotations

import argparse


def add_parser(sub):
    from sdprune.depth.select import CRITERIA

    p = sub.add_parser("prune", help="remove residual blocks and heal the smaller network", description=__doc__)
    a = p.add_argument
    a("checkpoint", nargs="?", help="checkpoint or run folder (default: the newest unpruned run)")
    a("--keep", type=float, help="fraction of the gated blocks to keep, in (0, 1] (rounded up to whole blocks)")
    a("--keep-blocks", type=int, help="number of gated blocks to keep")
    a("--max-params", type=_amount, help="parameter budget for the whole network (e.g. 150k)")
    a("--max-flops", type=_amount, help="FLOP budget per image (e.g. 20M)")
    a("--criterion", choices=CRITERIA,
      help="how blocks are ranked (default: survival if the run learned it, else ablation)")
    a("--iterative", action="store_true", help="remove one block at a time, re-scoring after each removal")
    a("--allow-empty-stage", dest="keep_stages", action="store_false",
      help="allow removing every block of a stage (default: each stage keeps one)")
    a("--heal", choices=["none", "bn"], default="bn", help="re-estimate BatchNorm statistics (default bn)")
    a("--no-heal", dest="heal", action="store_const", const="none", help="same as --heal none")
    a("--finetune-epochs", type=float, default=0, help="fine-tune the pruned network for N epochs (default 0)")
    a("--no-distill", dest="distill", action="store_false",
      help="fine-tune on labels only (default: distil from the unpruned network)")
    a("--seed", type=int, default=0, help="seed of the random criterion, BN batches and fine-tuning")
    a("--out", help="output folder (default <run>/pruned-keepK.KK)")
    a("--device", default="auto", help="auto | cpu | cuda")
    a("--batch-size", type=int, default=128, help="batch size of the statistics")
    a("--stats-images", type=int, help="score on the first N validation images only (default: all)")
    return p


def _amount(text: str) -> float:
    """'150k' -> 150000.0, '2.5M' -> 2500000.0, '1e6' -> 1000000.0."""
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(text[-1:].lower(), 1.0)
    try:
        return float(text[:-1] if scale != 1.0 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 150k or 2.5M, got {text!r}") from None


def run(args, reporter) -> int:
    from sdprune.errors import SdpruneError
    from sdprune.prune.pipeline import check_options, prune_checkpoint
    from sdprune.report import human

    check_options(args.keep, args.keep_blocks, args.criterion, args.heal, args.finetune_epochs,
                  args.max_params, args.max_flops)
    if args.batch_size < 1 or (args.stats_images is not None and args.stats_images < 1):
        raise SdpruneError("--batch-size and --stats-images must be at least 1")
    s = prune_checkpoint(args.checkpoint, keep=args.keep, keep_blocks=args.keep_blocks, max_params=args.max_params,
                         max_flops=args.max_flops, criterion=args.criterion, iterative=args.iterative,
                         heal=args.heal, finetune_epochs=args.finetune_epochs, distill=args.distill,
                         keep_stages=args.keep_stages, seed=args.seed, out=args.out, device=args.device,
                         batch_size=args.batch_size, stats_images=args.stats_images, reporter=reporter)
    rows = [["blocks", s["blocks"]["before"], "-", s["blocks"]["after"]],
            ["params", human(s["params"]["before"]), "-", human(s["params"]["after"])],
            ["FLOPs", human(s["flops"]["before"]), "-", human(s["flops"]["after"])]]
    for split in ("val", "test"):
        unhealed = f"{s['unhealed'][split]['acc']:.2f}%" if s["unhealed"] else "-"
        rows.append([f"{split} accuracy", f"{s['before'][split]['acc']:.2f}%", unhealed,
                     f"{s['after'][split]['acc']:.2f}%"])
    reporter.table(f"pruned {s['model']} by {s['criterion']}{' (iterative)' if s['iterative'] else ''}",
                   ["", "before", "removed, unhealed", "after"], rows,
                   caption=f"removed: {', '.join(s['removed']) or 'nothing'}")
    reporter.info(f"wrote {s['checkpoint']}")
    reporter.result(s)
    return 0
