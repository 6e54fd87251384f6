"""The README's footprint figure: several `sdprune sweep` results on one plot.

For each sweep (one trained network each: plain, linear, learned, ...), the criterion
picked on the validation slice at each keep value, test accuracy against parameters.

    python tools/plot_footprint.py --out docs/footprint.png \\
        plain=bench-out/sweep/plain/sweep.json linear=bench-out/sweep/linear/sweep.json ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def best_per_keep(result: dict) -> list[dict]:
    """The point chosen on the validation slice for each keep value (never on test)."""
    best: dict[float, dict] = {}
    for p in result["points"]:
        if p["keep"] not in best or p["val_acc"] > best[p["keep"]]["val_acc"]:
            best[p["keep"]] = p
    return [best[k] for k in sorted(best)]


def scratch_points(b2: Path) -> dict[str, tuple[int, float]]:
    """{model: (parameters, mean test accuracy)} of the B2 from-scratch baselines."""
    from sdprune.nets.cifar_resnet import CifarResNet
    from sdprune.nets.measure import count_params

    accs: dict[str, list[float]] = {}
    for f in sorted(b2.glob("arms/scratch-*.json")):
        r = json.loads(f.read_text())
        accs.setdefault(r["model"], []).append(r["test_acc"])
    return {name: (count_params(CifarResNet(int(name[len("resnet"):]), 10, 1)), sum(a) / len(a))
            for name, a in accs.items()}


def main(argv=None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    from sdprune.nets.cifar_resnet import CifarResNet
    from sdprune.nets.measure import count_params
    from sdprune.report import human

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweeps", nargs="+", help="LABEL=path/to/sweep.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--scratch", help="a B2 output folder: also plot its from-scratch baselines (mean over seeds)")
    ap.add_argument("--scratch-point", action="append", default=[], metavar="MODEL=ACC",
                    help="a from-scratch baseline measured elsewhere (e.g. resnet20=91.51 from B2's table); "
                         "say where in the figure's caption")
    args = ap.parse_args(argv)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = []
    for item in args.sweeps:
        label, path = item.split("=", 1)
        result = json.loads(Path(path).read_text())
        pts = best_per_keep(result)
        line, = ax.plot([p["params"] for p in pts], [p["test_acc"] for p in pts], marker="o", label=label)
        u = result["unpruned"]
        ax.plot([u["params"]], [u["test_acc"]], marker="*", ms=13, color=line.get_color())
        for p in pts:
            rows.append((label, p["keep"], p["blocks"], p["criterion"], p["test_acc"], p["params"],
                         p.get("latency_ratio")))
    scratch = scratch_points(Path(args.scratch)) if args.scratch else {}
    for item in args.scratch_point:
        name, acc = item.split("=", 1)
        scratch[name] = (count_params(CifarResNet(int(name[len("resnet"):]), 10, 1)), float(acc))
    if scratch:
        for name, (params, acc) in scratch.items():
            ax.plot([params], [acc], marker="s", ms=7, color="grey", ls="none")
            ax.annotate(f"{name} from scratch", (params, acc), textcoords="offset points", xytext=(4, -10), fontsize=7)
            rows.append((f"{name} from scratch", 1.0, None, "-", acc, params, None))
    ax.set_xlabel("parameters")
    ax.set_ylabel("test accuracy (%)")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human(v)))
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("ResNet-32, Fashion-MNIST: blocks removed, BN re-estimated where it helps val\n"
                 "(star: unpruned, healed the same way)", fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print("| network | keep | blocks | criterion (val) | test % | params | latency ratio |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for label, keep, blocks, crit, acc, params, ratio in rows:
        r = f"{ratio:.2f}" if ratio is not None else "-"
        print(f"| {label} | {keep:g} | {blocks if blocks is not None else '-'} | {crit} | {acc:.2f} | "
              f"{human(params)} | {r} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
