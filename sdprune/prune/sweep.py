"""The footprint curve: accuracy against size and latency, over keep values and criteria.

A loop over what `prune`, `export` and `bench` already do (no second implementation):
statistics and the unpruned model's evaluation are computed once; each (criterion, keep)
point selects blocks on the validation slice, removes them, heals, and is scored on the
test split; each distinct architecture is exported to ONNX once (verified like
`sdprune export`), and all of them are timed together, interleaved, by `bench_onnx`.
"""

from __future__ import annotations

import copy
import csv
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from sdprune.data.bundle import data_for_checkpoint
from sdprune.deploy.export import export_onnx
from sdprune.deploy.latency import bench_onnx
from sdprune.depth.select import check_criterion, removed_blocks, select_blocks
from sdprune.depth.structure import remove_blocks
from sdprune.errors import SdpruneError
from sdprune.nets.measure import size_of
from sdprune.prune.heal import heal_network
from sdprune.prune.stats import collect_stats
from sdprune.prune.sweep_plot import plot_sweep, report_markdown
from sdprune.report import Reporter, human
from sdprune.train.checkpoint import atomic_write, build_model, load_checkpoint, write_json
from sdprune.train.evaluate import assess, resolve_device
from sdprune.train.runs import resolve_checkpoint

HEAL_MODES = ("none", "bn", "finetune")
DEFAULT_KEEPS = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25)
DEFAULT_CRITERIA = ("survival", "ablation", "influence", "depth", "every-other", "random")
FIELDS = ("criterion", "keep", "blocks", "val_acc", "test_acc", "test_loss", "params", "flops",
          "onnx_bytes", "latency_ms", "latency_ratio", "heal")


def check_sweep(keeps: Sequence[float], criteria: Sequence[str], heal: str) -> None:
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
    if heal not in HEAL_MODES:
        raise SdpruneError(f"--heal must be one of {', '.join(HEAL_MODES)}, got {heal!r}")


def sweep_checkpoint(ckpt_path: str | Path | None = None, keeps: Sequence[float] = DEFAULT_KEEPS,
                     criteria: Sequence[str] = DEFAULT_CRITERIA, heal: str = "bn",
                     finetune_epochs: float = 1.0, onnx: bool = True, bench_repeats: int = 30,
                     threads: int | None = None, device: str = "auto", seed: int = 0,
                     out: str | Path | None = None, reporter: Reporter | None = None) -> dict[str, Any]:
    """Prune a checkpoint at every (criterion, keep), heal, score, export and time each point."""

    reporter = reporter or Reporter(quiet=True)
    check_sweep(keeps, criteria, heal)
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
    shape = tuple(data.input_shape)
    t0 = time.perf_counter()
    reporter.info(f"sweeping {ckpt['path']}: {len(criteria)} criteria x {len(keeps)} keep values, heal {heal}")
    base = {**assess(model, data, dev), **size_of(model, shape)}
    rows_stats = collect_stats(model, data, dev, ablation="ablation" in criteria, reporter=reporter)
    cache: dict[tuple, dict] = {}  # kept set -> measured point (criteria often agree)
    points = []
    with reporter.progress("pruning", len(keeps) * len(criteria)) as bar:
        for criterion in criteria:
            for keep in keeps:
                kept = select_blocks(rows_stats, criterion, keep=keep, total_blocks=total, seed=seed)
                key = tuple(kept)
                if key not in cache:
                    cache[key] = _measure(model, data, dev, removed_blocks(rows_stats, kept), heal,
                                          finetune_epochs, seed, reporter)
                points.append({"criterion": criterion, "keep": keep, "blocks": len(kept), "kept": kept,
                               "heal": heal if len(kept) < present else "none", **cache[key]})
                bar.update(1, f"{criterion} keep {keep:g}: {cache[key]['test_acc']:.2f}%")
    if onnx:
        _onnx_costs(model, meta, data, points, rows_stats, bench_repeats, threads, reporter)
    out_dir = Path(out) if out else Path(ckpt["path"]).parent
    result = {"checkpoint": ckpt["path"], "model": meta["model"]["name"], "dataset": data.name,
              "survival": meta.get("config", {}).get("survival"), "heal": heal,
              "finetune_epochs": finetune_epochs if heal == "finetune" else 0,
              "blocks_total": total, "blocks_present": present, "choice_split": "val",
              "score_split": "test",
              "unpruned": {"val_acc": base["val"]["acc"], "test_acc": base["test"]["acc"],
                           "test_loss": base["test"]["loss"], "params": base["params"], "flops": base["flops"]},
              "points": points, "wall_s": time.perf_counter() - t0}
    result["files"] = write_outputs(result, out_dir, reporter)
    write_json(out_dir / "sweep.json", result)
    return result


def _measure(model, data, dev, removed: list[str], heal: str, finetune_epochs: float, seed: int,
             reporter: Reporter) -> dict[str, Any]:
    """Accuracy and size of ``model`` without the ``removed`` blocks, healed as asked."""

    pruned = copy.deepcopy(model)
    if removed:  # nothing removed: the unpruned model exactly, no healing
        remove_blocks(pruned, removed)
        heal_network(pruned, data, dev, bn=heal != "none", finetune_epochs=finetune_epochs if heal == "finetune" else 0,
                     teacher=model, seed=seed, reporter=reporter)
    scores = assess(pruned, data, dev)
    size = size_of(pruned, tuple(data.input_shape))
    return {"val_acc": scores["val"]["acc"], "test_acc": scores["test"]["acc"],
            "test_loss": scores["test"]["loss"], "params": size["params"], "flops": size["flops"],
            "_model": pruned}


def _onnx_costs(model, meta, data, points: list[dict], rows: list[dict], repeats: int, threads: int | None,
                reporter: Reporter) -> None:
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
                rec = export_onnx(group[0]["_model"].cpu(), sub, Path(tmp) / str(i), data=data, samples=32)
                files.append(rec["file"])
                bar.update(1)
        timing = bench_onnx(files, threads=threads, repeats=repeats, batch_sizes=(1,), warmup=5)
        for group, path, m in zip(by_arch.values(), files, timing["models"]):
            for p in group:
                p["onnx_bytes"] = Path(path).stat().st_size
                p["latency_ms"] = m["latency"]["1"]["p50_ms"]
                p["latency_ratio"] = m["latency"]["1"]["ratio"]
    for p in points:
        p.pop("_model", None)


def _architecture(point: dict, layout: dict[str, tuple]) -> tuple:
    """What latency and file size depend on: how many blocks of each kind each stage keeps.

    Blocks of one stage (same output shape) are the same computation apart from the
    transition block, so two kept sets with the same counts are the same graph.
    """
    return tuple(sorted(layout[name] for name in point["kept"]))


def write_outputs(result: dict, out_dir: Path, reporter: Reporter) -> dict[str, str]:
    """sweep.csv, sweep.md and (with matplotlib) sweep.png; shows the table."""

    for p in result["points"]:
        p.pop("_model", None)
    out_dir.mkdir(parents=True, exist_ok=True)

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(result["points"])
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
    reporter.table(f"sweep of {result['model']} on {result['dataset']} (heal {result['heal']}; "
                   f"unpruned {u['test_acc']:.2f}%)",
                   ["criterion", "keep", "blocks", "val %", "test %", "params", "FLOPs", "ONNX", "ms (b=1)", "ratio"],
                   [[p["criterion"], f"{p['keep']:g}", p["blocks"], f"{p['val_acc']:.2f}", f"{p['test_acc']:.2f}",
                     human(p["params"]), human(p["flops"]), human(p.get("onnx_bytes", 0)) + "B" if "onnx_bytes" in p else "-",
                     f"{p['latency_ms']:.3f}" if "latency_ms" in p else "-",
                     f"{p['latency_ratio']:.2f}" if "latency_ratio" in p else "-"] for p in result["points"]],
                   caption="blocks chosen on the validation slice; accuracy on the test split")
    return files
