"""The sweep's plot (matplotlib, optional) and its short markdown report."""

from __future__ import annotations

from pathlib import Path

from sdprune.report import human
from sdprune.train.checkpoint import atomic_write


def plot_sweep(result: dict, path: Path) -> str | None:
    """Accuracy against parameters and against latency, one line per criterion; None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (FuncFormatter)


    has_latency = all("latency_ms" in p for p in result["points"])
    fig, axes = plt.subplots(1, 2 if has_latency else 1, figsize=(11 if has_latency else 6, 4.2), squeeze=False)
    u = result["unpruned"]
    panels = [("params", "parameters", 1.0)] + ([("latency_ms", "ONNX Runtime latency, batch 1 (ms)", 1.0)]
                                                  if has_latency else [])
    for ax, (key, label, _) in zip(axes[0], panels):
        for criterion in dict.fromkeys(p["criterion"] for p in result["points"]):
            pts = sorted((p for p in result["points"] if p["criterion"] == criterion), key=lambda p: p[key])
            ax.plot([p[key] for p in pts], [p["test_acc"] for p in pts], marker="o", ms=3, label=criterion)
        x0 = u[key] if key in u else max(p[key] for p in result["points"] if p["blocks"] == result["blocks_present"])
        ax.plot([x0], [u["test_acc"]], marker="*", ms=14, color="black", ls="none", label="unpruned (reference)")
        if u["trained"]["test_acc"] != u["test_acc"]:
            ax.plot([x0], [u["trained"]["test_acc"]], marker="x", ms=8, color="grey", ls="none",
                    label="unpruned, as trained")
        ax.set_xlabel(label)
        if key == "params":
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: human(v)))
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
             f"\"change\" is against the unpruned network healed the same way ({u['test_acc']:.2f}%, "
             f"{u['kept']} statistics).", "",
             "| keep | blocks | best criterion (val) | test % | change | BN statistics | params | latency ratio |",
             "|---:|---:|---|---:|---:|---|---:|---:|"]
    free_until = None
    for keep in sorted({p["keep"] for p in result["points"]}, reverse=True):
        pts = [p for p in result["points"] if p["keep"] == keep]
        best = max(pts, key=lambda p: p["val_acc"])  # chosen on val, never on test
        if best["change"] >= -1.0:
            free_until = keep
        ratio = f"{best['latency_ratio']:.2f}" if "latency_ratio" in best else "-"
        lines.append(f"| {keep:g} | {best['blocks']} | {best['criterion']} | {best['test_acc']:.2f} | "
                     f"{best['change']:+.2f} | {best['bn']['kept'] if best['bn'] else '-'} | {best['params']:,} | "
                     f"{ratio} |")
    lines += ["", f"Pruning costs at most 1 point down to keep {free_until:g}." if free_until is not None
              else "Every pruned point costs more than 1 point.", "",
              "Files: " + ", ".join(f"`{Path(v).name}`" for v in files.values()), ""]
    return "\n".join(lines)
