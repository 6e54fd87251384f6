"""ONNX export of an sdprune network, verified against PyTorch on real images.

The exported file is self-contained (weights inside, no external data), has a dynamic
batch dimension, no random op (the network is exported in eval mode, where every gate is
its deterministic survival scale) and carries in ``metadata_props`` everything a device
needs: class names, input shape, normalisation, the kept blocks. A file is only put in
place after ONNX Runtime reproduced PyTorch's logits within ``atol``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from sdprune.errors import SdpruneError
from sdprune.report import Reporter

if TYPE_CHECKING:  # torch is imported where it is used: `sdprune --help` should not pay for it
    import torch
    from torch import nn

# 18 is the lowest opset the dynamo exporter writes natively (it silently writes 18 when
# asked for less) and ONNX Runtime has run it since 1.14, mobile packages included; the
# ops these networks need (Conv, Gemm, Relu, Add, Mul, Pad, Slice, ReduceMean) gained
# nothing in later opsets, so the oldest one reaches the most deployed runtimes.
DEFAULT_OPSET = 18
MIN_OPSET = 18
DEFAULT_ATOL = 1e-4
DEFAULT_SAMPLES = 256
# The test images parity runs on are a seeded random subset: a split sorted by class (an
# imagefolder's) would give its first N images, i.e. its first classes only. A fixed seed
# checks the same images every time the same model is exported.
SAMPLE_SEED = 0
PARITY_BATCHES = (1, 64)
RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
              "Bernoulli", "Dropout", "Multinomial"}
PREPROCESSING = "float32 NCHW; x = (pixel / 255 - mean) / std per channel"


def check_export_args(opset: int, atol: float, samples: int) -> None:
    """Reject settings no export can use, before any work (an opset the exporter cannot write
    would otherwise come back silently as another one)."""
    import onnx

    top = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= top:
        raise SdpruneError(f"--opset {opset}: the exporter writes opsets {MIN_OPSET} to {top}")
    if not (atol >= 0 and math.isfinite(atol)):  # also rejects NaN
        raise SdpruneError(f"--atol must be >= 0 and finite, got {atol}")
    if samples < 1:
        raise SdpruneError(f"--samples must be at least 1, got {samples}")


def onnx_metadata(meta: dict[str, Any], source: str | None = None, params: int | None = None,
                  flops: int | None = None) -> dict[str, str]:
    """The key/value strings stored in the ONNX file's metadata_props (lists as JSON)."""
    from sdprune import __version__
    from sdprune.train.checkpoint import kept_blocks

    removed = list(meta.get("removed", []))
    data = meta["data"]
    props = {
        "sdprune_version": __version__,
        "model": meta["model"]["name"],
        "dataset": data["dataset"],
        "classes": json.dumps(list(data["classes"])),
        "input_shape": json.dumps(list(data["input_shape"])),
        "mean": json.dumps(list(data["mean"])),
        "std": json.dumps(list(data["std"])),
        "preprocessing": PREPROCESSING + (f"; first resize the short side to {data['resize']} and take the "
                                          f"centre {data['input_shape'][-1]} x {data['input_shape'][-1]}"
                                          if data.get("resize") else ""),
        **({"mode": data["mode"], "resize": json.dumps(int(data["resize"]))} if data.get("resize") else {}),
        "kept_blocks": json.dumps(kept_blocks(meta)),
        "removed_blocks": json.dumps(removed),
        "source_checkpoint": str(source or meta.get("source", "")),
    }
    if params is not None:
        props["params"] = json.dumps(int(params))
    if flops is not None:
        props["flops"] = json.dumps(int(flops))
    return props


def export_onnx(model: nn.Module, meta: dict[str, Any], out_dir: str | Path, opset: int = DEFAULT_OPSET,
                atol: float = DEFAULT_ATOL, samples: int = DEFAULT_SAMPLES, reporter: Reporter | None = None,
                data=None, source: str | None = None,
                batch_sizes: Sequence[int] = PARITY_BATCHES) -> dict[str, Any]:
    """Write ``out_dir/model.onnx`` for ``model`` and prove ONNX Runtime computes the same logits.

    Parity is measured on ``samples`` real test images of the checkpoint's dataset (``data``,
    a DataBundle, is loaded from ``meta`` when not given; see ``sample_test_images``) at
    every batch size in ``batch_sizes``. Above ``atol``, or on any non-finite logit, the
    export fails with the figures and leaves no file. ``model`` itself is left as it was
    (device, dtype, mode): a float32 CPU copy in eval mode is exported.
    """
    import onnx

    from sdprune.data.bundle import data_for_checkpoint
    from sdprune.deploy.runtime import open_session
    from sdprune.nets.measure import count_flops, count_params

    reporter = reporter or Reporter(quiet=True)
    check_export_args(opset, atol, samples)
    out_dir = prepare_dir(out_dir)
    data = data if data is not None else data_for_checkpoint(meta)
    # eval: every gate is its deterministic survival scale
    model = copy.deepcopy(model).eval().float().cpu()
    images, sample = sample_test_images(data, samples)
    example = _normalize(images[:2] if len(images) >= 2 else images.repeat(2, 1, 1, 1), data)
    stage = Path(tempfile.mkdtemp(prefix=".onnx-", dir=out_dir))
    try:
        path = stage / "model.onnx"
        with reporter.progress("exporting to ONNX", 1) as bar:
            exporter = _export_graph(model, example, path, opset)
            bar.update(1, exporter)
        proto = onnx.load(str(path))
        _check_graph(proto, opset)
        props = onnx_metadata(meta, source, count_params(model), count_flops(model, tuple(data.input_shape)))
        del proto.metadata_props[:]
        for key, value in props.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, str(path))
        try:
            onnx.checker.check_model(str(path), full_check=True)
        except onnx.checker.ValidationError as err:
            raise SdpruneError(f"the exported graph fails onnx.checker: {str(err).splitlines()[0]}") from None
        parity = {**verify_parity(model, open_session(path), images, data, batch_sizes, atol), "sample": sample}
        _show_parity(reporter, parity, path.name)
        if not parity["ok"]:
            raise SdpruneError(f"parity check failed: {_parity_failure(parity)}; no model written")
        final = out_dir / "model.onnx"
        os.replace(path, final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {"file": str(final), "exporter": exporter, "opset": opset, "parity": parity,
            "metadata": props, "params": int(props["params"]), "flops": int(props["flops"])}


def sample_test_images(data, samples: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """``samples`` test images (``ImageSet.sample`` with ``SAMPLE_SEED``), and how they were drawn.

    Parity and the .ort checks use it: the first N images of a split sorted by class would
    cover its first classes only.
    """
    test = data.test.sample(samples, SAMPLE_SEED).in_memory()
    return test.images, {"split": "test", "images": len(test), "of": len(data.test), "draw": "seeded random subset",
                         "seed": SAMPLE_SEED, "classes": int(test.labels.unique().numel())}


def verify_parity(model: nn.Module, session, images: torch.Tensor, data, batch_sizes: Sequence[int],
                  atol: float) -> dict[str, Any]:
    """Max |logit difference|, top-1 agreement and non-finite outputs of ONNX Runtime vs PyTorch
    per batch size; ``ok`` only when every logit of both is finite and within the bound,
    ``atol`` times the largest |logit| when that is above 1: fp32 rounding in a reordered
    computation grows with the values, so a network with logits near 50 differs by ~1e-3
    where one with logits near 1 differs by ~1e-5 (the README's main job, measured)."""
    import torch

    from sdprune.deploy.runtime import non_finite_rows

    name = session.get_inputs()[0].name
    rows = []
    for batch in batch_sizes:
        worst, scale, agree, bad_torch, bad_ort = 0.0, 0.0, 0, 0, 0
        for start in range(0, len(images), batch):
            x = _normalize(images[start:start + batch], data)
            with torch.no_grad():
                expected = model(x).float()
            got = torch.from_numpy(session.run(None, {name: x.numpy()})[0]).float()
            bad_torch, bad_ort = bad_torch + non_finite_rows(expected), bad_ort + non_finite_rows(got)
            finite = torch.isfinite(expected).all(1) & torch.isfinite(got).all(1)
            if finite.any():
                worst = max(worst, float((got[finite] - expected[finite]).abs().max()))
                scale = max(scale, float(expected[finite].abs().max()))
            agree += int((got.argmax(1) == expected.argmax(1))[finite].sum())
        row = {"batch": int(batch), "images": len(images), "max_abs_diff": worst,
               "top1_agreement": 100.0 * agree / max(1, len(images)),
               "non_finite": {"pytorch": bad_torch, "onnxruntime": bad_ort},
               "max_abs_logit": scale, "bound": atol * max(1.0, scale)}
        row["ok"] = bad_torch == bad_ort == 0 and worst <= row["bound"]
        rows.append(row)
    return {"ok": all(r["ok"] for r in rows), "atol": atol, "dataset": data.name, "split": "test", "batches": rows}


def _parity_failure(parity: dict[str, Any]) -> str:
    """What went wrong in a failed parity record, in one line."""
    for r in parity["batches"]:
        bad = r["non_finite"]
        if bad["pytorch"] or bad["onnxruntime"]:
            return (f"non-finite logits from PyTorch on {bad['pytorch']} of {r['images']} test images and "
                    f"from ONNX Runtime on {bad['onnxruntime']} (batch {r['batch']})")
    worst = max((r for r in parity["batches"] if not r["ok"]), key=lambda r: r["max_abs_diff"] - r["bound"])
    return (f"max |logit diff| {worst['max_abs_diff']:.3g} > --atol {parity['atol']:g} x max(1, largest |logit| "
            f"{worst['max_abs_logit']:.3g}) at batch {worst['batch']} "
            f"(top-1 agreement {worst['top1_agreement']:.2f}% on {worst['images']} images)")


def prepare_dir(path: str | Path) -> Path:
    """Create an output folder and prove it is writable (one clear error otherwise)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe-")
        probe.close()
    except OSError as err:
        raise SdpruneError(f"cannot write to output folder {path}: {err.strerror or err}") from None
    return path


def _export_graph(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> str:
    """Export with the dynamo exporter; the TorchScript one only if dynamo fails for this model."""
    import torch

    # Both exporters print progress and warnings; --json owns stdout, so keep them quiet.
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False,
                              opset_version=opset, input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: "batch"},))
            return "dynamo"
        except Exception as err:  # the exporter raises many types; any failure means "try the other"
            first = err
        try:
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
            return "torchscript"
        except Exception as err:
            raise SdpruneError(f"ONNX export failed (dynamo: {_line(first)}; torchscript: {_line(err)})") from None


def _check_graph(proto, opset: int) -> None:
    """The written graph is the one asked for: right opset, one dynamic batch, no random op."""
    written = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None)
    if written != opset:
        raise SdpruneError(f"--opset {opset}: the exporter wrote opset {written} instead")
    nodes = list(proto.graph.node) + [n for f in proto.functions for n in f.node]
    random_ops = sorted({n.op_type for n in nodes} & RANDOM_OPS)
    if random_ops:
        raise SdpruneError(f"the exported graph contains random ops ({', '.join(random_ops)})")
    dims = proto.graph.input[0].type.tensor_type.shape.dim if len(proto.graph.input) == 1 else []
    if not dims or not dims[0].dim_param:
        raise SdpruneError("the exported graph has no dynamic batch dimension")


def _normalize(images: torch.Tensor, data) -> torch.Tensor:
    from sdprune.data.images import normalize

    return normalize(images, data.mean, data.std)


def _line(err: BaseException) -> str:
    lines = [s for s in str(err).strip().splitlines() if s.strip()]
    return (lines[0] if lines else type(err).__name__)[:200]


def _show_parity(reporter: Reporter, parity: dict[str, Any], name: str) -> None:
    rows = [[str(r["batch"]), r["images"], f"{r['max_abs_diff']:.2e}", f"{r['bound']:.2e}",
             f"{r['top1_agreement']:.2f}%", "pass" if r["ok"] else "FAIL"] for r in parity["batches"]]
    reporter.table(f"Validating {name}: ONNX Runtime vs PyTorch", ["batch", "images", "max |Δ logit|",
                   f"bound (atol {parity['atol']:g} x max(1, |logit|))", "top-1 agreement", "parity"], rows,
                   caption=f"{parity['sample']['images']} real {parity['split']} images of {parity['dataset']} "
                           f"(seeded random subset, {parity['sample']['classes']} classes)")
