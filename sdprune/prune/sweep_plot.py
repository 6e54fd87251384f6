"""The sweep's plot (matplotlib, optional) and its short markdown report."""

from __future__ import annotations

from pathlib import Path

from sdprune.report import human
from sdprune.files import atomic_write


def plot_sweep(result: dict, path: Path) -> str | None:
    """Accuracy against parameters and against latency, one line per criterion; None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    u = result["unpruned"]
    has_latency = "latency_ms" in u  # the unpruned network is timed whenever the points are
    fig, axes = plt.subplots(1, 2 if has_latency else 1, figsize=(11 if has_latency else 6, 4.2), squeeze=False)
    panels = [("params", "parameters")] + ([("latency_ms", "ONNX Runtime latency, batch 1 (ms)")]
                                           if has_latency else [])
    for ax, (key, label) in zip(axes[0], panels):
        for criterion in dict.fromkeys(p["criterion"] for p in result["points"]):
            pts = sorted((p for p in result["points"] if p["criterion"] == criterion), key=lambda p: p[key])
            ax.plot([p[key] for p in pts], [p["test_acc"] for p in pts], marker="o", ms=3, label=criterion)
        x0 = u[key]
        ax.plot([x0], [u["test_acc"]], marker="*", ms=14, color="black", ls="none", label="unpruned (reference)")
        if u["trained"]["test_acc"] != u["test_acc"]:
            ax.plot([x0], [u["trained"]["test_acc"]], marker="x", ms=8, color="grey", ls="none",
                    label="unpruned, as trained")
        ax.set_xlabel(label)
        if key == "params":
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human(v)))
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{result['model']} on {result['dataset']} ({result.get('survival')}), heal {result['heal']}")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return str(path)


def report_markdown(result: dict, files: dict) -> str:
    """A short human summary: the best criterion per keep and where pruning stops being free."""
    u = result["unpruned"]
    lines = [f"# Sweep: {result['model']} on {result['dataset']}", "",
             f"Checkpoint `{result['checkpoint']}` (survival: {result.get('survival')}), {u['params']:,} parameters "
             f"unpruned: test accuracy {u['trained']['test_acc']:.2f}% as trained, "
             f"{u['recalibrated']['test_acc']:.2f}% with BatchNorm statistics re-estimated. "
             f"Blocks chosen on the validation slice, accuracy on the test split, heal `{result['heal']}`; "
             "re-estimated BatchNorm statistics are kept only where they improve the validation slice. "
             f"\"change\" is in test points against the unpruned network healed the same way "
             f"({u['test_acc']:.2f}%, {u['statistics']} statistics); negative: accuracy lost. "
             "Latency ratios are to the unpruned network.", "",
             "| keep | blocks | best criterion (val) | test % | change | BN statistics | params | latency ratio |",
             "|---:|---:|---|---:|---:|---|---:|---:|"]
    best = {}
    for keep in sorted({p["keep"] for p in result["points"]}, reverse=True):
        pts = [p for p in result["points"] if p["keep"] == keep]
        best[keep] = b = max(pts, key=lambda p: p["val_acc"])  # chosen on val, never on test
        ratio = f"{b['latency_ratio']:.2f}" if "latency_ratio" in b else "-"
        lines.append(f"| {keep:g} | {b['blocks']} | {b['criterion']} | {b['test_acc']:.2f} | "
                     f"{b['change']:+.2f} | {b['bn']['statistics'] if b['bn'] else '-'} | {b['params']:,} | "
                     f"{ratio} |")
    lines += ["", free_until(best, result["blocks_present"]), "",
              "Files: " + ", ".join(f"`{Path(v).name}`" for v in files.values()), ""]
    return "\n".join(lines)


def free_until(best: dict[float, dict], present: int, points: float = 1.0) -> str:
    """Down to which keep pruning costs at most ``points`` (best point per keep, keeps descending):
    only keeps that remove a block count, and the first that costs more ends the claim."""
    pruned = [(keep, p) for keep, p in best.items() if p["blocks"] < present]
    if not pruned:
        return "No point removes a block."
    free = None
    for keep, p in pruned:
        if p["change"] < -points:
            break
        free = (keep, p)
    if free is None:
        keep, p = pruned[0]
        return f"Already the mildest pruning (keep {keep:g}, {p['blocks']} blocks) costs more than {points:g} point."
    keep, p = free
    return f"Pruning costs at most {points:g} point down to keep {keep:g} ({p['blocks']} blocks)."
