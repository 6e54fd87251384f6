"""The footprint curve: accuracy against size and latency, over keep values and criteria.

A loop over what `prune`, `export` and `bench` already do (no second implementation):
statistics and the reference (the unpruned network, healed like every point) are
computed once; each (criterion, keep) point is the pruning pipeline's
(``sdprune.prune.pipeline``: select on the validation slice, remove, heal, measure on
the test split); the unpruned network and each distinct pruned architecture are exported
to ONNX once (verified like `sdprune export`) and all of them are timed together,
interleaved, by `bench_onnx`, the unpruned one first: every latency ratio is to it.
"""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from sdprune.choices import STATS_IMAGES, SWEEP_CRITERIA, SWEEP_KEEPS, SWEEP_REPEATS, check_seed
from sdprune.data.bundle import data_for_checkpoint
from sdprune.deploy.export import export_onnx
from sdprune.deploy.latency import bench_onnx, check_bench
from sdprune.depth.select import Budget, check_criterion, removed_blocks, target_count
from sdprune.errors import SdpruneError
from sdprune.files import check_output
from sdprune.prune.heal import BN_HEAL, NO_BATCHNORM, HealSpec
from sdprune.prune.output import check_settings, check_source
from sdprune.prune.pipeline import Pruned, Reference, choose_blocks, cut_and_heal, reference, score_blocks
from sdprune.prune.stats import check_stats_args
from sdprune.prune.sweep_plot import plot_sweep, report_markdown
from sdprune.report import Reporter, human
from sdprune.train.checkpoint import build_model, kept_blocks, load_checkpoint, total_blocks, write_json
from sdprune.files import atomic_write, remove_stale_temps
from sdprune.train.evaluate import resolve_device
from sdprune.train.runs import resolve_checkpoint

SWEEP_FILE = "sweep.json"
SWEEP_ROOM = 4 << 20  # bytes: sweep.json, .csv, .md and the plot
FIELDS = ("criterion", "keep", "blocks", "val_acc", "test_acc", "test_loss", "change", "params", "flops",
          "onnx_bytes", "latency_ms", "latency_ratio", "heal", "statistics")


def check_sweep(keeps: Sequence[float], criteria: Sequence[str], repeats: int = SWEEP_REPEATS,
                threads: int | None = None, batch_size: int = 128, stats_images: int | None = None) -> None:
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
    check_bench(threads, repeats=repeats, batch_sizes=(1,))
    check_stats_args(batch_size, stats_images)


def sweep_settings(keeps: Sequence[float], criteria: Sequence[str], heal_spec: HealSpec, keep_stages: bool,
                   seed: int, stats_images: int | None, onnx: bool) -> dict[str, Any]:
    """Every choice that can change a sweep's result (what two sweeps must share to share a folder)."""
    return {"keeps": list(keeps), "criteria": list(criteria), **heal_spec.record(), "keep_stages": keep_stages,
            "seed": seed, "stats_images": stats_images, "onnx": onnx}


def sweep_checkpoint(ckpt_path: str | Path | None = None, keeps: Sequence[float] = SWEEP_KEEPS,
                     criteria: Sequence[str] = SWEEP_CRITERIA, heal_spec: HealSpec = BN_HEAL,
                     onnx: bool = True, bench_repeats: int = SWEEP_REPEATS, threads: int | None = None,
                     device: str = "auto", seed: int = 0, out: str | Path | None = None, keep_stages: bool = True,
                     batch_size: int = 128, stats_images: int | None = STATS_IMAGES,
                     reporter: Reporter | None = None) -> dict[str, Any]:
    """Prune a checkpoint at every (criterion, keep), heal, score, export and time each point.

    Writes sweep.json, .csv, .md (and .png with matplotlib) to ``out``, default the
    checkpoint's folder, where a sweep made with other settings is refused (``--out``
    writes anywhere). ``keep_stages``, ``batch_size`` and ``stats_images`` are `sdprune
    prune`'s options of the same names; every point is what `sdprune prune` would make.
    """
    reporter = reporter or Reporter(quiet=True)
    check_sweep(keeps, criteria, bench_repeats, threads, batch_size, stats_images)
    check_seed(seed)
    # exported points of non-finite weights fail their parity check: refuse them before any work
    ckpt = load_checkpoint(resolve_checkpoint(str(ckpt_path) if ckpt_path else None, reporter=reporter), reporter,
                           finite=onnx)
    meta = ckpt["meta"]
    total, present = total_blocks(meta), len(kept_blocks(meta))
    for keep in keeps:  # a keep above what is left: before any work
        target_count(total, keep, None, present)
    settings = sweep_settings(keeps, criteria, heal_spec, keep_stages, seed, stats_images, onnx)
    out_dir = Path(out) if out else Path(ckpt["path"]).parent
    if out is None:
        check_settings(out_dir / SWEEP_FILE, settings, "sweep")
        check_source(out_dir / SWEEP_FILE, ckpt["path"], "sweep")
    check_output(out_dir, folder=True, need_bytes=SWEEP_ROOM, what="output folder")
    if out_dir.is_dir():
        remove_stale_temps(out_dir)  # what a killed sweep (or other command) left there
    dev = resolve_device(device)
    model = build_model(ckpt).to(dev)
    data = data_for_checkpoint(meta)
    t0 = time.perf_counter()
    reporter.info(f"sweeping {ckpt['path']}: {len(criteria)} criteria x {len(keeps)} keep values, "
                  f"heal {heal_spec.mode}")
    ref = reference(model, data, heal_spec, seed, dev)
    if heal_spec.bn and ref.statistics == "none":  # asked for (the default), and it cannot be done
        reporter.warn(NO_BATCHNORM)
    rows = score_blocks(model, data, criteria, dev, batch_size, stats_images, reporter)
    unpruned = tuple(ref.network.kept)
    measured = {unpruned: measure(ref.network, ref)}  # kept set -> what it scored (criteria often agree)
    networks = {unpruned: ref.network.model} if onnx else {}  # what is exported: only kept when it will be
    points = []
    with reporter.progress("pruning", len(keeps) * len(criteria)) as bar:
        for criterion in criteria:
            for keep in keeps:
                budget = Budget(keep, keep_stages=keep_stages)
                kept = tuple(choose_blocks(model, rows, criterion, budget, data.input_shape, total, seed))
                if kept not in measured:
                    pruned = cut_and_heal(model, removed_blocks(rows, kept), data, heal_spec, seed, dev, reporter)
                    measured[kept] = measure(pruned, ref)
                    if onnx:
                        networks[kept] = pruned.model
                points.append({"criterion": criterion, "keep": keep, **measured[kept]})
                bar.update(1, f"{criterion} keep {keep:g}: {points[-1]['test_acc']:.2f}%")
    costs = _onnx_costs(networks, unpruned, meta, data, points, rows, bench_repeats, threads, reporter) if onnx else {}
    result = {"checkpoint": ckpt["path"], "model": meta["model"]["name"], "dataset": data.name,
              "survival": meta.get("config", {}).get("survival"), **settings, "blocks_total": total,
              "blocks_present": present, "choice_split": "val", "score_split": "test",
              "unpruned": {**unpruned_record(ref), **costs}, "points": points, "wall_s": time.perf_counter() - t0}
    result["files"] = write_outputs(result, out_dir, reporter)
    write_json(out_dir / SWEEP_FILE, result)
    return result


def _flat(scores: dict) -> dict[str, float]:
    return {"val_acc": scores["val"]["acc"], "test_acc": scores["test"]["acc"], "test_loss": scores["test"]["loss"]}


def unpruned_record(ref: Reference) -> dict[str, Any]:
    """The reference: as trained, BN re-estimated, and healed like the points (its own accuracy fields)."""
    return {**_flat(ref.healed), "params": ref.params, "flops": ref.flops, "statistics": ref.statistics,
            "trained": _flat(ref.trained), "recalibrated": _flat(ref.recalibrated)}


def measure(pruned: Pruned, ref: Reference) -> dict[str, Any]:
    """What a point records of its network: the pipeline's record, flattened where the table and plots read it."""
    record = pruned.record(ref)
    return {"blocks": len(pruned.kept), **_flat(pruned.after), "change": record["change"]["test"],
            "params": pruned.params, "flops": pruned.flops, "heal": pruned.mode,
            **{k: record[k] for k in ("kept", "unhealed", "bn", "finetune")}}


def _onnx_costs(networks: dict[tuple, nn.Module], unpruned: tuple, meta: dict, data, points: list[dict],
                rows: list[dict], repeats: int, threads: int | None, reporter: Reporter) -> dict[str, Any]:
    """Export the unpruned network and each distinct pruned architecture once (verified), time them all
    interleaved with the unpruned one first (every ratio is to it); returns the unpruned one's figures."""
    layout = {r["name"]: (r["stage"], r["transition"]) for r in rows}
    exported = {_architecture(unpruned, layout): unpruned}  # architecture -> the kept set exported for it
    for p in points:
        exported.setdefault(_architecture(p["kept"], layout), tuple(p["kept"]))
    with tempfile.TemporaryDirectory(prefix="sdprune-sweep-") as tmp:
        files = []
        with reporter.progress("exporting", len(exported)) as bar:
            for i, kept in enumerate(exported.values()):
                sub = {**meta, "removed": [n for n in meta["blocks"] if n not in kept]}
                files.append(export_onnx(networks[kept].cpu(), sub, Path(tmp) / str(i), data=data,
                                         samples=32)["file"])
                bar.update(1)
        timing = bench_onnx(files, threads=threads, repeats=repeats, batch_sizes=(1,), warmup=5)
        costs = {arch: {"onnx_bytes": Path(path).stat().st_size, "latency_ms": m["latency"]["1"]["p50_ms"],
                        "latency_ratio": m["latency"]["1"]["ratio"]}
                 for arch, path, m in zip(exported, files, timing["models"])}
    for p in points:
        p.update(costs[_architecture(p["kept"], layout)])
    return costs[_architecture(unpruned, layout)]


def _architecture(kept: Sequence[str], layout: dict[str, tuple]) -> tuple:
    """What latency and file size depend on: how many blocks of each kind each stage keeps.

    Blocks of one stage (same output shape) are the same computation apart from the
    transition block, so two kept sets with the same counts are the same graph.
    """
    return tuple(sorted(layout[name] for name in kept))


def write_outputs(result: dict, out_dir: Path, reporter: Reporter) -> dict[str, str]:
    """sweep.csv, sweep.md and (with matplotlib) sweep.png; shows the table."""
    out_dir.mkdir(parents=True, exist_ok=True)

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows({**p, "statistics": p["bn"]["statistics"] if p["bn"] else ""} for p in result["points"])
    atomic_write(out_dir / "sweep.csv", write_csv)
    files = {"csv": str(out_dir / "sweep.csv"), "json": str(out_dir / SWEEP_FILE),
             "report": str(out_dir / "sweep.md")}
    png = plot_sweep(result, out_dir / "sweep.png")
    if png:
        files["plot"] = png
    else:
        reporter.info("no plot: matplotlib is not installed (pip install 'sdprune[plot]')")
    atomic_write(out_dir / "sweep.md", lambda tmp: Path(tmp).write_text(report_markdown(result, files)))
    u = result["unpruned"]
    recalibrated = ("no BatchNorm to re-estimate" if u["statistics"] == "none"
                    else f"{u['recalibrated']['test_acc']:.2f}% BN re-estimated")
    reporter.table(f"sweep of {result['model']} on {result['dataset']} (heal {result['heal']}); unpruned "
                   f"{u['trained']['test_acc']:.2f}% as trained, {recalibrated}",
                   ["criterion", "keep", "blocks", "val %", "test %", "change", "BN statistics", "params", "FLOPs",
                    "ONNX", "ms (b=1)", "ratio"],
                   [[p["criterion"], f"{p['keep']:g}", p["blocks"], f"{p['val_acc']:.2f}", f"{p['test_acc']:.2f}",
                     f"{p['change']:+.2f}", p["bn"]["statistics"] if p["bn"] else "-",
                     human(p["params"]), human(p["flops"]), human(p.get("onnx_bytes", 0)) + "B" if "onnx_bytes" in p else "-",
                     f"{p['latency_ms']:.3f}" if "latency_ms" in p else "-",
                     f"{p['latency_ratio']:.2f}" if "latency_ratio" in p else "-"] for p in result["points"]],
                   caption=f"blocks chosen on the validation slice; accuracy on the test split; change: test points "
                           f"against the unpruned network healed the same way ({u['test_acc']:.2f}%, "
                           f"{u['statistics']} BN statistics; negative: accuracy lost); BN statistics: those kept, "
                           "re-estimated only where they improve val; ratio: latency against the unpruned network")
    return files
