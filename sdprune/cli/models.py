"""`sdprune models`: the registered architectures with their blocks, parameters and FLOPs.

A block is what `prune --keep` counts: a residual block (ResNet, MobileNet, ConvNeXt,
MaxViT's MBConv) or, in a transformer, each residual branch (attention or MLP: a ViT or
Swin encoder layer is two blocks, a MaxViT layer five).

Counted without building any weights and cached (sdprune.nets.catalog): instant after the first time.
"""

from __future__ import annotations

MAX_CLASSES = 1_000_000  # no classifier sdprune builds has more outputs


def add_parser(sub):
    p = sub.add_parser("models", help="list the architectures", description=__doc__)
    p.add_argument("names", nargs="*", metavar="MODEL", help="only these architectures (default: every one)")
    p.add_argument("--classes", type=int, default=10, help="number of classes for the counts (default 10)")
    return p


def run(args, reporter) -> int:
    from sdprune.errors import SdpruneError
    from sdprune.nets.catalog import describe_models
    from sdprune.nets.registry import list_models
    from sdprune.report import human

    if not 1 <= args.classes <= MAX_CLASSES:
        raise SdpruneError(f"--classes must be 1 to {MAX_CLASSES:,}, got {args.classes}")
    rows = describe_models(args.names or list_models(), args.classes)
    reporter.table("sdprune models", ["model", "blocks", "params", "FLOPs", "input"],
                   [[r["name"], r["blocks"], human(r["params"]), human(r["flops"]),
                     "x".join(map(str, r["input"]))] for r in rows],
                   caption="blocks: what prune --keep counts (a residual block; in a transformer, each "
                           "residual branch, attention or MLP, is a block); FLOPs: one image at the default "
                           "input, a multiply-add counted as 2")
    reporter.result({"models": rows})
    return 0
