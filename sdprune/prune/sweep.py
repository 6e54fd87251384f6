"""The footprint curve: accuracy against size and latency, over keep values and criteria.

A loop over what `prune`, `export` and `bench` already do (no second implementation):
statistics and the reference (the unpruned network, healed like every point) are
computed once; each (criterion, keep) point is the pruning pipeline's
(``sdprune.prune.pipeline``: select on the validation slice, remove, heal, measure on
the test split); each distinct architecture is exported to ONNX once (verified like
`sdprune export`), and all of them are timed together, interleaved, by `bench_onnx`.
"""

from __future__ import annotations

import csv
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from sdprune.data.bundle import data_for_checkpoint
from sdprune.deploy.export import export_onnx
from sdprune.deploy.latency import bench_onnx
from sdprune.depth.select import check_criterion, removed_blocks
from sdprune.errors import SdpruneError
from sdprune.prune.heal import BN_HEAL, HealSpec
from sdprune.prune.pipeline import Budget, Pruned, Reference, choose_blocks, cut_and_heal, reference, score_blocks
from sdprune.prune.sweep_plot import plot_sweep, report_markdown
from sdprune.report import Reporter, human
from sdprune.train.checkpoint import atomic_write, build_model, load_checkpoint, write_json
from sdprune.train.evaluate import resolve_device
from sdprune.train.runs import resolve_checkpoint

DEFAULT_KEEPS = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25)
DEFAULT_CRITERIA = ("survival", "ablation", "influence", "depth", "every-other", "random")
FIELDS = ("criterion", "keep", "blocks", "val_acc", "test_acc", "test_loss", "change", "params", "flops",
          "onnx_bytes", "latency_ms", "latency_ratio", "heal", "bn")


def check_sweep(keeps: Sequence[float], criteria: Sequence[str]) -> None:
    """Reject a sweep no run can do, before anything is loaded."""

    if not keeps:
        raise SdpruneError("--keep needs at least one value")
    for k in keeps:
        if not (0.0 < k <= 1.0):  # also NaN
            raise SdpruneError(f"every --keep value must be in (0, 1], got {k}")
    if not criteria:
        raise SdpruneError("--criteria needs at least one criterion")
    for c in criteria:
        check_criterion(c)


def sweep_checkpoint(ckpt_path: str | Path | None = None, keeps: Sequence[float] = DEFAULT_KEEPS,
                     criteria: Sequence[str] = DEFAULT_CRITERIA, heal_spec: HealSpec = BN_HEAL,
                     onnx: bool = True, bench_repeats: int = 30, threads: int | None = None, device: str = "auto",
                     seed: int = 0, out: str | Path | None = None, reporter: Reporter | None = None) -> dict[str, Any]:
    """Prune a checkpoint at every (criterion, keep), heal, score, export and time each point."""

    reporter = reporter or Reporter(quiet=True)
    check_sweep(keeps, criteria)
    ckpt = load_checkpoint(resolve_checkpoint(str(ckpt_path) if ckpt_path else None))
    meta = ckpt["meta"]
    total = len(meta["blocks"])
    present = total - len(meta.get("removed") or [])
    too_high = [k for k in keeps if math.ceil(k * total - 1e-9) > present]
    if too_high:
        raise SdpruneError(f"{ckpt['path']} is already pruned to {present} of {total} blocks: "
                           f"cannot sweep --keep {too_high[0]:g}")
    dev = resolve_device(device)
    model = build_model(ckpt).to(dev)
    data = data_for_checkpoint(meta)
    t0 = time.perf_counter()
    reporter.info(f"sweeping {ckpt['path']}: {len(criteria)} criteria x {len(keeps)} keep values, "
                  f"heal {heal_spec.mode}")
    ref = reference(model, data, heal_spec, seed, dev)
    rows = score_blocks(model, data, criteria, dev, reporter=reporter)
    cache: dict[tuple, Pruned] = {}  # kept set -> pruned network (criteria often agree)
    points = []
    with reporter.progress("pruning", len(keeps) * len(criteria)) as bar:
        for criterion in criteria:
            for keep in keeps:
                kept = tuple(choose_blocks(model, rows, criterion, Budget(keep), data.input_shape, total, seed))
                if kept not in cache:
                    cache[kept] = cut_and_heal(model, removed_blocks(rows, kept), data, heal_spec, seed, dev, reporter)
                points.append(sweep_point(criterion, keep, cache[kept], ref))
                bar.update(1, f"{criterion} keep {keep:g}: {points[-1]['test_acc']:.2f}%")
    if onnx:
        _onnx_costs({k: p.model for k, p in cache.items()}, meta, data, points, rows, bench_repeats, threads,
                    reporter)
    out_dir = Path(out) if out else Path(ckpt["path"]).parent
    result = {"checkpoint": ckpt["path"], "model": meta["model"]["name"], "dataset": data.name,
              "survival": meta.get("config", {}).get("survival"), "heal": heal_spec.mode,
              "finetune_epochs": heal_spec.finetune_epochs, "blocks_total": total, "blocks_present": present,
              "choice_split": "val", "score_split": "test", "unpruned": unpruned_record(ref),
              "points": points, "wall_s": time.perf_counter() - t0}
    result["files"] = write_outputs(result, out_dir, reporter)
    write_json(out_dir / "sweep.json", result)
    return result


def _flat(scores: dict) -> dict[str, float]:
    return {"val_acc": scores["val"]["acc"], "test_acc": scores["test"]["acc"], "test_loss": scores["test"]["loss"]}


def unpruned_record(ref: Reference) -> dict[str, Any]:
    """The reference: as trained, BN re-estimated, and healed like the points (its own accuracy fields)."""
    return {**_flat(ref.healed), "params": ref.params, "flops": ref.flops, "kept": ref.kept,
            "trained": _flat(ref.trained), "recalibrated": _flat(ref.recalibrated)}


def sweep_point(criterion: str, keep: float, pruned: Pruned, ref: Reference) -> dict[str, Any]:
    """One point of the curve: the pipeline's record, flattened where the table and plots read it."""
    record = pruned.record(ref)
    return {"criterion": criterion, "keep": keep, "blocks": len(pruned.kept), **_flat(pruned.after),
            "change": record["change"]["test"], "params": pruned.params, "flops": pruned.flops, "heal": pruned.heal,
            **{k: record[k] for k in ("kept", "unhealed", "bn", "finetune")}}


def _onnx_costs(models: dict[tuple, nn.Module], meta, data, points: list[dict], rows: list[dict], repeats: int,
                threads: int | None, reporter: Reporter) -> None:
    """Export each distinct architecture once (verified) and time them all interleaved."""

    layout = {r["name"]: (r["stage"], r["transition"]) for r in rows}
    by_arch: dict[tuple, list[dict]] = {}
    for p in sorted(points, key=lambda p: -p["blocks"]):  # the unpruned architecture first
        by_arch.setdefault(_architecture(p, layout), []).append(p)
    with tempfile.TemporaryDirectory(prefix="sdprune-sweep-") as tmp:
        files = []
        with reporter.progress("exporting", len(by_arch)) as bar:
            for i, group in enumerate(by_arch.values()):
                sub = {**meta, "removed": [n for n in meta["blocks"] if n not in group[0]["kept"]]}
                rec = export_onnx(models[tuple(group[0]["kept"])].cpu(), sub, Path(tmp) / str(i), data=data,
                                  samples=32)
                files.append(rec["file"])
                bar.update(1)
        timing = bench_onnx(files, threads=threads, repeats=repeats, batch_sizes=(1,), warmup=5)
        for group, path, m in zip(by_arch.values(), files, timing["models"]):
            for p in group:
                p["onnx_bytes"] = Path(path).stat().st_size
                p["latency_ms"] = m["latency"]["1"]["p50_ms"]
                p["latency_ratio"] = m["latency"]["1"]["ratio"]


def _architecture(point: dict, layout: dict[str, tuple]) -> tuple:
    """What latency and file size depend on: how many blocks of each kind each stage keeps.

    Blocks of one stage (same output shape) are the same computation apart from the
    transition block, so two kept sets with the same counts are the same graph.
    """
    return tuple(sorted(layout[name] for name in point["kept"]))


def write_outputs(result: dict, out_dir: Path, reporter: Reporter) -> dict[str, str]:
    """sweep.csv, sweep.md and (with matplotlib) sweep.png; shows the table."""

    out_dir.mkdir(parents=True, exist_ok=True)

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows({**p, "bn": p["bn"]["kept"] if p["bn"] else ""} for p in result["points"])
    atomic_write(out_dir / "sweep.csv", write_csv)
    files = {"csv": str(out_dir / "sweep.csv"), "json": str(out_dir / "sweep.json"),
             "report": str(out_dir / "sweep.md")}
    png = plot_sweep(result, out_dir / "sweep.png")
    if png:
        files["plot"] = png
    else:
        reporter.info("no plot: matplotlib is not installed (pip install 'sdprune[plot]')")
    atomic_write(out_dir / "sweep.md", lambda tmp: Path(tmp).write_text(report_markdown(result, files)))
    u = result["unpruned"]
    reporter.table(f"sweep of {result['model']} on {result['dataset']} (heal {result['heal']}); unpruned "
                   f"{u['trained']['test_acc']:.2f}% as trained, {u['recalibrated']['test_acc']:.2f}% BN re-estimated",
                   ["criterion", "keep", "blocks", "val %", "test %", "change", "BN", "params", "FLOPs", "ONNX",
                    "ms (b=1)", "ratio"],
                   [[p["criterion"], f"{p['keep']:g}", p["blocks"], f"{p['val_acc']:.2f}", f"{p['test_acc']:.2f}",
                     f"{p['change']:+.2f}", p["bn"]["kept"] if p["bn"] else "-",
                     human(p["params"]), human(p["flops"]), human(p.get("onnx_bytes", 0)) + "B" if "onnx_bytes" in p else "-",
                     f"{p['latency_ms']:.3f}" if "latency_ms" in p else "-",
                     f"{p['latency_ratio']:.2f}" if "latency_ratio" in p else "-"] for p in result["points"]],
                   caption=f"blocks chosen on the validation slice; accuracy on the test split; change: against "
                           f"the unpruned network healed the same way ({u['test_acc']:.2f}%, {u['kept']} BN "
                           "statistics); BN: the statistics kept, re-estimated only where they improve val")
    return files
