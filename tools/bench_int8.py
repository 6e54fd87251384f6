"""B4 int8 recipe — calibration method x calibration images x nodes left in float, per target.

For one trained checkpoint (any: ``--ckpt``; default a resnet20 trained ``--epochs`` 4 on the
embedded digits, as B4's model is made), the fp32 ONNX export is quantized with every
combination of ONNX Runtime calibration method (MinMax, Percentile), number of
calibration images (training split) and number of nodes left in float, for each target
(arm, x86), and every int8 model is judged as `sdprune export --int8` judges it
(``sdprune.deploy.gate``): accuracy change with its 95% interval and agreement on the
clearly decided test images. ``--ort`` also converts each arm model to ONNX Runtime's
mobile format (optimised for arm) and judges the .ort file against fp32 the same way.

The nodes left in float are chosen on the VALIDATION slice, never the test split: from
the fully quantized model, each quantized node is left in float alone and ranked by how
much that lowers the mean squared logit error against fp32 on the validation images; the
k best are left in float together (``--rank-images`` caps the validation images ranking runs on).
Accuracy figures only: timings on a shared CPU are not figures (use tools/bench_export.py on
an idle machine).

A real network: adopt public weights with `sdprune adopt` (README), prune it, pass its checkpoint.

    python tools/bench_int8.py --work /tmp/int8-b4 --json b4.json     # B4's model (trains it, ~1 min)
    python tools/bench_int8.py --ckpt /tmp/int8-r56p/checkpoint.pt --rank-images 1000 \
        --calib-images 256,1024 --exclude 0,2,ends --work /tmp/int8-r56w --json r56.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import torch

from sdprune.deploy.gate import compare_decisions
from sdprune.deploy.quantize import (CALIB_BATCH_SIZE, METHODS, TARGETS, _quantize, calibration_batches, end_nodes,
                                     prepare)
from sdprune.deploy.runtime import labelled_logits, open_session
from sdprune.report import Reporter

# node types ONNX Runtime's QDQ quantizer quantizes in these networks (candidates for float)
RULES = {"first": [0], "last": [-1], "ends": [0, -1]}  # which of end_nodes' two layers stay float
QUANTIZED = {"Conv", "Gemm", "MatMul", "Add", "GlobalAveragePool", "AveragePool", "MaxPool"}


def logits(path: Path, split, data) -> tuple[torch.Tensor, torch.Tensor]:
    (out,), labels = labelled_logits([open_session(path)], split, data.mean, data.std)
    return out, labels


def candidates(prepared: Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type in QUANTIZED]


def rank_nodes(fp32_val: torch.Tensor, quantize_with, names: list[str], val, data, reporter: Reporter) -> list[dict]:
    """Each node's gain (mean squared logit error vs fp32 on the validation images ``val``, all
    nodes quantized minus that node alone left in float), best first."""
    base = float(((logits(quantize_with(()), val, data)[0] - fp32_val) ** 2).mean())
    rows = []
    with reporter.progress("ranking nodes on the validation slice", len(names)) as bar:
        for name in names:
            err = float(((logits(quantize_with((name,)), val, data)[0] - fp32_val) ** 2).mean())
            rows.append({"node": name, "gain": base - err, "mse": err, "mse_all_int8": base})
            bar.update(1)
    return sorted(rows, key=lambda r: -r["gain"])


def judged(path: Path, fp32_test: torch.Tensor, data) -> dict:
    got, labels = logits(path, data.test, data)
    return compare_decisions(fp32_test, got, labels)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="trained checkpoint (default: train resnet20 on digits for --epochs)")
    p.add_argument("--data-dir", help="where the checkpoint's image folder is now (imagefolder)")
    p.add_argument("--rank-images", type=int, help="rank nodes on a seeded subset of this many validation images")
    p.add_argument("--epochs", type=int, default=4, help="epochs of the default model (default 4, as B4)")
    p.add_argument("--methods", default="minmax,percentile")
    p.add_argument("--calib-images", default="256,1024", help="comma-separated (multiples of 32)")
    p.add_argument("--exclude", default="0,1,2,4,first,last,ends",
                   help="comma-separated numbers of nodes left in float (the most sensitive on validation), "
                        "or rules: first, last, ends (first and last layers)")
    p.add_argument("--targets", default="arm,x86")
    p.add_argument("--ort", action="store_true", help="also judge each arm model's .ort file (optimised for arm)")
    p.add_argument("--work", help="keep the files here (default: a temporary folder)")
    p.add_argument("--json", help="write every figure to this file")
    args = p.parse_args()
    torch.set_num_threads(1)
    reporter = Reporter()
    methods = [m for m in args.methods.split(",") if m]
    sizes = [int(n) for n in args.calib_images.split(",") if n]
    excludes = [k if k in RULES else int(k) for k in dict.fromkeys(args.exclude.split(",")) if k]
    targets = [t for t in args.targets.split(",") if t]
    assert set(methods) <= set(METHODS) and set(targets) <= set(TARGETS), "unknown method or target"
    with tempfile.TemporaryDirectory(prefix="sdprune-int8-") as tmp:
        root = Path(args.work or tmp)
        root.mkdir(parents=True, exist_ok=True)
        res = run(args, root, methods, sizes, excludes, targets, reporter)
    print(markdown(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


def run(args, root: Path, methods, sizes, excludes, targets, reporter: Reporter) -> dict:
    from sdprune.data.bundle import data_for_checkpoint
    from sdprune.deploy.export import export_onnx
    from sdprune.train.checkpoint import build_model, load_checkpoint
    from sdprune.train.config import TrainConfig
    from sdprune.train.loop import train

    trained = root / "trained" / "checkpoint.pt"
    source = args.ckpt or (trained if trained.exists() else
                           train(TrainConfig(model="resnet20", epochs=args.epochs, out=str(root / "trained")),
                                 reporter)["checkpoint"])
    ckpt = load_checkpoint(source)
    data, name = data_for_checkpoint(ckpt["meta"], data_dir=args.data_dir), ckpt["meta"]["model"]["name"]
    if not (root / "model.onnx").exists():
        export_onnx(build_model(ckpt), ckpt["meta"], root, samples=64, data=data, source=str(source))
    fp32 = root / "model.onnx"
    prepared = root / "prepared.onnx"
    prepare(fp32, prepared)
    names = candidates(prepared)
    val = data.val.sample(args.rank_images, 0) if args.rank_images else data.val
    fp32_val, fp32_test = logits(fp32, val, data)[0], logits(fp32, data.test, data)[0]
    input_name = open_session(fp32).get_inputs()[0].name
    rows, rankings = [], {}
    for method in methods:
        for size in sizes:
            batches = calibration_batches(data, max(1, size // CALIB_BATCH_SIZE))
            cache = root / f"ranges-{method}-{size}.json"
            for target in targets:
                def quantize_with(exclude, _t=target):
                    tag = hashlib.sha256("\n".join(exclude).encode()).hexdigest()[:12]
                    out = root / f"q-{method}-{size}-{_t}-{tag}.onnx"
                    if not out.exists():
                        _quantize(fp32, str(out), input_name, batches, _t, method, exclude, prepared, cache)
                    return out
                t0 = time.perf_counter()
                quantize_with(())
                ranked = any(k not in RULES and k > 0 for k in excludes)
                ranking = rank_nodes(fp32_val, quantize_with, names, val, data, reporter) if ranked else []
                rankings[f"{method}-{size}-{target}"] = ranking
                for k in excludes:
                    ends = end_nodes(prepared)
                    chosen = [ends[i] for i in RULES[k]] if k in RULES else [r["node"] for r in ranking[:k]]
                    path = quantize_with(tuple(chosen))
                    row = {"method": method, "images": len(batches) * CALIB_BATCH_SIZE, "target": target,
                           "float_nodes": chosen, "float_rule": k,
                           "file": "onnx", **judged(path, fp32_test, data)}
                    rows.append(row)
                    if args.ort and target == "arm":
                        rows.append({**row, "file": "ort-arm", **judged(to_ort(path, data), fp32_test, data)})
                    reporter.info(line(rows[-1]))
                reporter.info(f"{method} {size} {target}: {time.perf_counter() - t0:.0f} s")
    return {"checkpoint": str(source) if args.ckpt else
            f"resnet20 trained {args.epochs} epochs on digits", "model": name, "dataset": data.name,
            "val_images": len(val),
            "test_images": len(data.test), "candidates": len(names), "rows": rows, "rankings": rankings,
            "date": time.strftime("%Y-%m-%d")}


def to_ort(path: Path, data) -> Path:
    """``path`` in ONNX Runtime's mobile format, optimised for arm (checked against ``path`` by the converter)."""
    from sdprune.deploy.mobile import convert_to_ort

    out = path.with_suffix("")
    out.mkdir(exist_ok=True)
    convert_to_ort([path], out, data, samples=64, target_platform="arm")
    return out / path.with_suffix(".ort").name


def line(r: dict) -> str:
    lo, hi = r["acc_change_ci"]
    return (f"{r['method']} {r['images']} {r['target']} {r['file']} float {r['float_rule']}: acc "
            f"{r['fp32_acc']:.2f} -> {r['int8_acc']:.2f} ({r['acc_change']:+.2f} [{lo:+.2f}, {hi:+.2f}]), clear "
            f"{r['clear_agreement']:.2f}% ({r['clear_flips']}/{r['clear_images']}), all {r['top1_agreement']:.2f}%")


def markdown(res: dict) -> str:
    fp32 = res["rows"][0]["fp32_acc"] if res["rows"] else float("nan")
    lines = [f"{res['checkpoint']} ({res['model']}, {res['dataset']}): fp32 accuracy {fp32:.2f}% on "
             f"{res['test_images']} test images; nodes chosen on {res['val_images']} validation images; "
             f"{res['candidates']} quantized nodes", "",
             "| calibration | images | target | file | float nodes | accuracy change [95% interval] | "
             "clear agreement (flips / clear) | all agreement |", "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lo, hi = r["acc_change_ci"]
        lines.append(f"| {METHODS[r['method']]} | {r['images']} | {r['target']} | {r['file']} | "
                     f"{r['float_rule']} | {r['acc_change']:+.2f} [{lo:+.2f}, {hi:+.2f}] | "
                     f"{r['clear_agreement']:.2f}% ({r['clear_flips']}/{r['clear_images']}) | "
                     f"{r['top1_agreement']:.2f}% |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
