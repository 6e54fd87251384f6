"""From a checkpoint to the files a device runs: model.onnx, model.int8.onnx, .ort, export.json.

Everything is built in a staging folder inside the output folder and moved into place
only when every step succeeded, one atomic rename per file, export.json last; files a
previous export listed in its export.json and this one did not make are then removed.
A failed export changes nothing; only a crash during the renames can leave new files
beside the previous export.json, whose sha256 sums then tell them apart.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from sdprune.errors import SdpruneError
from sdprune.files import check_output, file_bytes
from sdprune.report import Reporter

EXPORT_DIR = "export"  # default output: <checkpoint folder>/export/
RECORD = "export.json"


def default_out_dir(checkpoint: str | Path) -> Path:
    """Where `sdprune export` writes when not told: ``export`` beside ``checkpoint.pt``,
    ``export-<name>`` beside any other checkpoint file (two never share one)."""
    from sdprune.train.runs import CHECKPOINT

    checkpoint = Path(checkpoint)
    return checkpoint.parent / (EXPORT_DIR if checkpoint.name == CHECKPOINT else f"{EXPORT_DIR}-{checkpoint.stem}")


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path | None = None, opset: int | None = None,
                      atol: float | None = None, samples: int | None = None, int8: bool = False,
                      calib_batches: int | None = None, target: str = "arm", ort: bool = False,
                      reporter: Reporter | None = None, int8_min_clear_agreement: float | None = None,
                      int8_max_drop: float | None = None, calib_method: str | None = None,
                      int8_float_ends: bool | None = None) -> dict[str, Any]:
    """Export a checkpoint (full or pruned) to verified device files and describe them in export.json.

    ``target`` is the device's CPU family ("arm" for phones, "x86"): it picks the int8
    settings and the platform the ORT-format files are optimised for. Every file is
    checked before anything is published: fp32 against PyTorch (``atol``), int8 against
    fp32 (``sdprune.deploy.gate``: top-1 agreement of at least ``int8_min_clear_agreement`` % on
    the clearly decided test images, and not more than ``int8_max_drop`` points less accurate
    beyond the test split's uncertainty; None: the defaults), .ort files against the ONNX
    files they came from. ``calib_method`` and ``int8_float_ends`` choose the int8 recipe
    (None: MinMax, and the target's choice of float layers; ``sdprune.deploy.quantize``).
    """
    from sdprune.data.bundle import data_for_checkpoint
    from sdprune.deploy.export import (DEFAULT_ATOL, DEFAULT_OPSET, DEFAULT_SAMPLES, check_export_args, export_onnx,
        prepare_dir)
    from sdprune.deploy.gate import DEFAULT_MAX_DROP, DEFAULT_MIN_CLEAR_AGREEMENT, check_gate
    from sdprune.deploy.quantize import DEFAULT_CALIB_BATCHES, DEFAULT_METHOD, METHODS, TARGETS, quantize_int8
    from sdprune.train.checkpoint import build_model, kept_blocks, load_checkpoint, total_blocks, write_json
    from sdprune.train.lock import locked_run
    from sdprune.files import TEMP_SUFFIX, remove_stale_temps

    reporter = reporter or Reporter(quiet=True)
    opset = DEFAULT_OPSET if opset is None else opset
    atol = DEFAULT_ATOL if atol is None else atol
    samples = DEFAULT_SAMPLES if samples is None else samples
    calib_batches = DEFAULT_CALIB_BATCHES if calib_batches is None else calib_batches
    min_clear = DEFAULT_MIN_CLEAR_AGREEMENT if int8_min_clear_agreement is None else int8_min_clear_agreement
    max_drop = DEFAULT_MAX_DROP if int8_max_drop is None else int8_max_drop
    check_export_args(opset, atol, samples)  # before loading anything: bad flags fail fast
    check_gate(min_clear, max_drop)
    if target not in TARGETS:
        raise SdpruneError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    if int8 and calib_batches < 1:
        raise SdpruneError(f"--calib-batches must be at least 1, got {calib_batches}")
    calib_method = DEFAULT_METHOD if calib_method is None else calib_method
    if calib_method not in METHODS:
        raise SdpruneError(f"--calib-method must be one of {', '.join(METHODS)}, got {calib_method!r}")
    ckpt = load_checkpoint(checkpoint, finite=True)  # NaN in, NaN out: no verification could pass it
    meta = ckpt["meta"]
    out = Path(out_dir if out_dir is not None else default_out_dir(ckpt["path"]))
    # fp32, int8 and .ort files: about three times the weights
    check_output(out, folder=True, need_bytes=3 * file_bytes(ckpt["path"]), what="output folder")
    # one export writes a folder at a time (a second is refused at once); a failed first export leaves
    # no trace (the lock removes the folder it created)
    with locked_run(out, "sdprune command", keep_file=False):
        model = build_model(ckpt)
        data = data_for_checkpoint(meta)
        prepare_dir(out)
        remove_stale_temps(out)  # staging folders of a killed export
        reporter.info(f"exporting {ckpt['path']} ({meta['model']['name']}, "
                      f"{len(kept_blocks(meta))}/{total_blocks(meta)} blocks) to {out}/")
        stage = Path(tempfile.mkdtemp(prefix=f".export.{os.getpid()}-", suffix=TEMP_SUFFIX, dir=out))
        try:
            onnx_rec = export_onnx(model, meta, stage, opset, atol, samples, reporter, data=data, source=ckpt["path"])
            made = {"model.onnx": "fp32 ONNX"}
            int8_rec = None
            if int8:
                int8_rec = quantize_int8(stage / "model.onnx", stage / "model.int8.onnx", data, calib_batches,
                                         target, reporter, min_clear_agreement=min_clear, max_drop=max_drop,
                                         method=calib_method, float_ends=int8_float_ends)
                made["model.int8.onnx"] = "int8 ONNX (QDQ)"
            ort_rec = None
            if ort:
                from sdprune.deploy.mobile import convert_to_ort

                ort_rec = convert_to_ort([stage / n for n in made], stage, data, samples, reporter,
                                         target_platform={"arm": "arm", "x86": "amd64"}[target], atol=atol)
                made.update({Path(f).name: "ORT format" for f in ort_rec["files"]})
                made[Path(ort_rec["config"]).name] = "operator config for a reduced ONNX Runtime build"
            record = _record(ckpt, out, stage, made, onnx_rec, int8_rec, ort_rec, target)
            write_json(stage / RECORD, record)
            _publish(stage, out, list(made) + [RECORD])
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        reporter.info(f"wrote {', '.join(made)} and {RECORD} to {out}/")
    return record


def file_record(path: str | Path, role: str = "") -> dict[str, Any]:
    """Name, size and sha256 of a file (so a device can check what it received)."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"name": path.name, "role": role, "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _record(ckpt: dict, out: Path, stage: Path, made: dict[str, str], onnx_rec: dict, int8_rec: dict | None,
            ort_rec: dict | None, target: str) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch

    from sdprune import __version__
    from sdprune.train.checkpoint import kept_blocks, total_blocks

    meta = ckpt["meta"]
    removed = list(meta.get("removed", []))

    def relocate(rec: dict | None, keys: tuple[str, ...]) -> dict | None:
        # paths inside the records point into the staging folder; give the final ones
        if rec is None:
            return None
        rec = dict(rec)
        for k in keys:
            if k in rec:
                rec[k] = str(out / Path(rec[k]).name) if isinstance(rec[k], str) else \
                    [str(out / Path(p).name) for p in rec[k]]
        return rec

    ort_rec = relocate(ort_rec, ("files", "config"))
    if ort_rec is not None:
        ort_rec["checks"] = [{**c, "file": str(out / Path(c["file"]).name),
                              "reference": str(out / Path(c["reference"]).name)} for c in ort_rec["checks"]]
    return {
        "sdprune_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "checkpoint": ckpt["path"],
        "kind": meta.get("kind"),
        "model": meta["model"]["name"],
        "dataset": meta["data"]["dataset"],
        "classes": list(meta["data"]["classes"]),
        "out_dir": str(out),
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "target": target,
        "opset": onnx_rec["opset"],
        "exporter": onnx_rec["exporter"],
        "files": [file_record(stage / name, role) for name, role in made.items()],
        "parity": onnx_rec["parity"],
        "int8": relocate(int8_rec, ("file",)),
        "ort": ort_rec,
        "blocks": {"total": total_blocks(meta), "kept": kept_blocks(meta), "removed": removed},
        "params": onnx_rec["params"],
        "flops": onnx_rec["flops"],
        "preprocessing": {"layout": "NCHW", "dtype": "float32", "input_shape": list(meta["data"]["input_shape"]),
                          "scale": "1/255", "mean": list(meta["data"]["mean"]), "std": list(meta["data"]["std"]),
                          "formula": "x = (pixel / 255 - mean) / std per channel",
                          **({"resize": meta["data"]["resize"], "centre_crop": meta["data"]["input_shape"][-1],
                              "view": "resize the short side to `resize`, then the centre crop"}
                             if meta["data"].get("resize") else {}),
                          "input": "input", "output": "logits"},
    }


def _publish(stage: Path, out: Path, names: list[str]) -> None:
    """Move the staged files into ``out``, one atomic rename each, export.json last, then remove the
    files the previous export.json listed and this export did not make."""
    import json

    stale: set[str] = set()
    try:
        old = json.loads((out / RECORD).read_text())
        stale = {f["name"] for f in old.get("files", []) if isinstance(f, dict)} - set(names)
    except (OSError, ValueError, TypeError, AttributeError):
        pass  # no previous export (or an unreadable record): nothing to clean up
    umask = os.umask(0)
    os.umask(umask)
    for name in names:  # RECORD is last in names
        os.chmod(stage / name, 0o666 & ~umask)  # staged files are private temp files; shipped ones are not
        os.replace(stage / name, out / name)
    for name in stale:
        if "/" not in name and name != RECORD:
            (out / name).unlink(missing_ok=True)
