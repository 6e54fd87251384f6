"""`sdprune stats`: how much each residual block matters, measured on the validation slice."""

from __future__ import annotations


def add_parser(sub):
    from sdprune.cli.common import image_count
    from sdprune.choices import STATS_IMAGES

    p = sub.add_parser("stats", help="per-block importance statistics of a checkpoint", description=__doc__)
    p.add_argument("checkpoint", nargs="?", help="checkpoint or run folder (default: the newest run)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch, bounds cached activations (default 128)")
    p.add_argument("--images", type=image_count, default=STATS_IMAGES, metavar="N",
                   help=f"use a seeded random subset of N validation images, or all (default {STATS_IMAGES}, "
                        "as prune scores)")
    p.add_argument("--no-ablation", dest="ablation", action="store_false",
                   help="skip drop-one ablation (influence and norms only: one pass)")
    p.add_argument("--out", help="where to write the statistics (default: stats.json next to checkpoint.pt, "
                                   "stats-NAME.json next to another checkpoint file NAME.pt)")
    return p


def run(args, reporter) -> int:
    from sdprune.prune.stats import score_checkpoint
    from sdprune.report import human
    from sdprune.train.runs import resolve_checkpoint

    checkpoint = resolve_checkpoint(args.checkpoint, reporter=reporter)
    doc = score_checkpoint(checkpoint, args.device, args.batch_size, args.images, args.ablation, args.out, reporter)

    def num(v, spec):
        return "-" if v is None else format(v, spec)

    rows = [[r["name"], num(r["survival"], ".3f"), num(r["delta_loss"], "+.4f"),
             num(r["delta_acc"], "+.2f"), num(r["influence"], ".4f"), num(r["residual_ratio"], ".3f"),
             human(r["params"]), human(r["flops"])] for r in doc["blocks"]]
    cost = doc["cost"]
    reporter.table(f"block statistics: {doc['model']} on {doc['dataset']} (val, {doc['images']} images)",
                   ["block", "p", "Δloss", "Δacc", "infl.", "ratio", "params", "FLOPs"], rows,
                   caption=f"p survival, Δ drop-one (acc in points), infl. 1-cos(skip, out), ratio "
                           f"|p·branch|/|shortcut(x)|; full network: val acc {doc['full']['acc']:.2f}%, "
                           f"loss {doc['full']['loss']:.4f}; cost {cost['stats_s']:.1f}s = "
                           f"{cost['ratio']:.1f} evaluation passes")
    reporter.info(f"wrote {doc['written']}")
    reporter.result(doc)
    return 0
