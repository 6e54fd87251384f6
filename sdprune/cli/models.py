"""`sdprune models`: the registered architectures with blocks, parameters and FLOPs."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("models", help="list the architectures", description=__doc__)
    p.add_argument("--classes", type=int, default=10, help="number of classes for the counts (default 10)")
    return p


def run(args, reporter) -> int:
    from sdprune.nets.registry import describe_model, list_models
    from sdprune.report import human

    rows = [describe_model(name, args.classes) for name in list_models()]
    reporter.table("sdprune models", ["model", "gated blocks", "params", "FLOPs", "input"],
                   [[r["name"], r["blocks"], human(r["params"]), human(r["flops"]),
                     "x".join(map(str, r["input"]))] for r in rows],
                   caption="FLOPs: one image at the default input, a multiply-add counted as 2")
    reporter.result({"models": rows})
    return 0
