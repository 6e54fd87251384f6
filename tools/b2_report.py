"""B2's table: the markdown `tools/bench_prune_quality.py` writes from its cached arms."""

from __future__ import annotations

import math
import os
import sys
import time

import torch

from sdprune.deploy.latency import cpu_name


def ms(values: list[float], runs: int | None = None) -> str:
    """Mean ± sample standard deviation over seeds (and how many seeds, if not all)."""
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.2f}" + (f" (1/{runs} seeds)" if runs and runs > 1 else "")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.2f} ± {sd:.2f}" + (f" ({len(values)}/{runs} seeds)" if runs and len(values) < runs else "")


def markdown(args, results: dict, baselines: dict) -> str:
    import onnxruntime

    lines = [f"Command: `python tools/bench_prune_quality.py {' '.join(sys.argv[1:])}`  ",
             f"Machine: {os.cpu_count()} cores, {cpu_name()}, torch {torch.__version__}, onnxruntime "
             f"{onnxruntime.__version__}, threads {torch.get_num_threads()}, device {args.device}, "
             f"{time.strftime('%Y-%m-%d')}  ",
             f"Schedule (every arm): {args.model}, {args.train_images} Fashion-MNIST training images "
             f"(10% of them the validation slice), {args.epochs} epochs, batch {args.batch_size}, cosine lr "
             f"{args.lr}; test split: {f'a seeded random {args.test_images} of its' if args.test_images else 'all'} "
             "10,000 images. Accuracy: test %, mean ± sd "
             f"over seeds {args.seeds}; blocks chosen and 'best' picked on the validation slice. Training compute "
             "is given as executed blocks per step, not wall time: arms may run in parallel on one device.", ""]
    stages = ("unhealed", "recalibrated", "bn", "finetune")
    for arm, runs in results.items():
        refs = [r["reference"] for r in runs]
        lines += [(f"**{arm}** — full depth {ms([x['trained']['test']['acc'] for x in refs])} as trained, "
                   f"{ms([x['recalibrated']['test']['acc'] for x in refs])} BN re-estimated, reference (healed "
                   f"like the pruned networks) {ms([x['healed']['test']['acc'] for x in refs])} "
                   f"({runs[0]['blocks']} blocks), executed blocks per training step "
                   f"{ms([r['executed_blocks'] for r in runs])}"), "",
                  "| keep | criterion | unhealed | BN re-estimated | BN-healed (kept where val improves) | fine-tuned |",
                  "|---|---|---|---|---|---|"]
        for keep, info in runs[0]["keeps"].items():
            for criterion in info["criteria"]:
                cells = [ms([r["keeps"][keep]["criteria"][criterion][stage]["test"]["acc"]
                             for r in runs if stage in r["keeps"][keep]["criteria"][criterion]], len(runs))
                         for stage in stages]
                lines.append(f"| {keep} ({info['kept']}) | {criterion} | " + " | ".join(cells) + " |")
            picked = [r["keeps"][keep]["criteria"][r["keeps"][keep]["best"]] for r in runs]
            cells = [ms([p[s]["test"]["acc"] for p in picked if s in p]) for s in stages]
            lines.append(f"| {keep} ({info['kept']}) | **best on val** | " + " | ".join(cells) + " |")
            base = baselines.get(keep, [])
            if base:
                lines.append(f"| {keep} ({info['kept']}) | scratch {base[0]['model']} ({base[0]['blocks']} blocks) | "
                             f"| | | {ms([b['test_acc'] for b in base])} |")
        lines.append("")
    lines += targets(results, baselines)
    return "\n".join(lines) + "\n"


def targets(results: dict, baselines: dict, keep: str = "0.5") -> list[str]:
    """The issue's targets for the stochastic-depth arm at keep 0.5, best criterion on val."""
    runs, base = results.get("linear"), baselines.get(keep)
    if not runs or keep not in runs[0]["keeps"]:
        return []
    full = sum(r["reference"]["healed"]["test"]["acc"] for r in runs) / len(runs)
    picked = [r["keeps"][keep]["criteria"][r["keeps"][keep]["best"]] for r in runs]
    bn = sum(p["bn"]["test"]["acc"] for p in picked) / len(picked)
    change = sum(p["change"]["test"] for p in picked) / len(picked)  # the pipeline's: result - reference
    lines = [(f"Targets (linear arm, keep {keep}, best criterion on val; means over seeds; full: the reference, "
              "healed like the pruned networks; change: test points against it, negative = accuracy lost):"),
             (f"- BN-healed {bn:.2f} vs full {full:.2f}: change {change:+.2f} "
              f"({'met' if change >= -3 else 'not met'}: within 3 points)")]
    tuned = [p for p in picked if "finetune" in p]
    if len(tuned) == len(picked):
        ft = sum(p["finetune"]["test"]["acc"] for p in tuned) / len(tuned)
        ft_change = sum(p["finetune_change"]["test"] for p in tuned) / len(tuned)
        verdict = "met" if ft_change >= -0.5 else "not met"
        lines.append(f"- fine-tuned {ft:.2f}: change {ft_change:+.2f} ({verdict}: within 0.5 points)")
        if base:
            scratch = sum(b["test_acc"] for b in base) / len(base)
            lines.append(f"- vs scratch {base[0]['model']} {scratch:.2f}: {ft - scratch:+.2f} "
                         f"({'met' if ft > scratch else 'not met'}: above)")
    return lines + [""]
