"""int8 static quantization of an exported classifier with ONNX Runtime's own tools.

ONNX Runtime's path for CNNs: ``quant_pre_process`` (shape inference and graph
optimisation), then ``quantize_static`` in QDQ format with per-channel weights, its
activation ranges calibrated on training images (never test images). The int8 model is
judged against the fp32 one on the whole test split and is only put in place when it passes
the gate of ``sdprune.deploy.gate``: agreement on the images fp32 decides clearly, and the
accuracy change beyond the test split's uncertainty.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from sdprune.deploy.gate import DEFAULT_MAX_DROP, DEFAULT_MIN_CLEAR_AGREEMENT, check_gate, compare_decisions, verdict
from sdprune.errors import SdpruneError
from sdprune.report import Reporter

if TYPE_CHECKING:
    import torch

DEFAULT_CALIB_BATCHES = 8
CALIB_BATCH_SIZE = 32
CALIB_SEED = 0
# ONNX Runtime's calibration methods (CalibrationMethod) by the name --calib-method takes.
# Entropy is not offered: quantize_static gives its calibrator 128 histogram bins for 128
# quantized bins, one candidate threshold, so it computes MinMax's ranges (measured: the same
# scales, byte for byte, on a resnet20; onnxruntime 1.32). Percentile (99.999th) bought nothing
# measurable over MinMax (BENCHMARKS.md B4, int8 recipe).
METHODS = {"minmax": "MinMax", "percentile": "Percentile"}
DEFAULT_METHOD = "minmax"
# Settings per target CPU, from quantize_static's own guidance. ARM (the phone): signed int8
# activations (QInt8) with the calibrated asymmetric range (a zero point per tensor;
# ActivationSymmetric is not set). Symmetric activations bought nothing measurable on
# digits (resnet20, 359 test images, vs fp32: 100% top-1 agreement and 97.49% accuracy
# either way after 15 epochs; 97.5% vs 96.9% agreement, 71.0% vs 72.7% accuracy after 2),
# so the range is not halved for them. x86 without VNNI multiplies u8 x s8 pairs with
# 16-bit saturation (vpmaddubsw), so activations are u8 and weights are cut to 7 bits there.
# float_ends: the first and the last layer (``end_nodes``) stay float. On arm they are the two
# layers int8 hurts most (ranked by leaving each node alone in float, on the validation slice:
# the same two on a public CIFAR-10 resnet20 and on a digits one), and leaving them float
# raised agreement with fp32 from 98.45% to 98.74% on CIFAR-10's 10,000 test images and
# turned every changed clear decision seen on arm (1 of 261, 2 of 447) back. On x86 no
# layer stood out (the 7-bit weights spread the error), neither end changed agreement
# measurably (97.84% -> 97.87%), and a float first layer breaks ONNX Runtime's all-int8
# x86 graph (2 Transposes become 18): x86 quantizes every layer. BENCHMARKS.md B4.
TARGETS = {
    "arm": {"activation": "QInt8", "weight": "QInt8", "reduce_range": False, "float_ends": True},
    "x86": {"activation": "QUInt8", "weight": "QInt8", "reduce_range": True, "float_ends": False},
}


def calibration_batches(data, calib_batches: int, batch_size: int = CALIB_BATCH_SIZE) -> list[torch.Tensor]:
    """Normalised float batches of training images (a fixed shuffle, so every class appears)."""
    import torch

    from sdprune.data.images import normalize

    if calib_batches < 1:
        raise SdpruneError(f"--calib-batches must be at least 1, got {calib_batches}")
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(CALIB_SEED))
    order = order[:calib_batches * batch_size]
    images = data.train.subset(order).in_memory().images  # a streamed folder: only these files are decoded
    return [normalize(images[i:i + batch_size], data.mean, data.std) for i in range(0, len(images), batch_size)]


def _reader(input_name: str, batches: list[torch.Tensor]):
    """An onnxruntime CalibrationDataReader over ``batches`` (defined here: onnxruntime loads lazily)."""
    from onnxruntime.quantization import CalibrationDataReader

    class ImageReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{input_name: b.numpy()} for b in batches])

        def get_next(self):
            return next(self.feeds, None)

    return ImageReader()


def quantize_int8(fp32_path: str | Path, out_path: str | Path, data, calib_batches: int = DEFAULT_CALIB_BATCHES,
                  target: str = "arm", reporter: Reporter | None = None, compare: bool = True,
                  min_clear_agreement: float | None = DEFAULT_MIN_CLEAR_AGREEMENT,
                  max_drop: float | None = DEFAULT_MAX_DROP, method: str = DEFAULT_METHOD,
                  float_ends: bool | None = None, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Write an int8 QDQ copy of ``fp32_path`` once it has been measured against the fp32 model.

    ``data`` is the checkpoint's DataBundle: calibration draws ``calib_batches`` batches of
    its training images; the int8 model is compared with fp32 on its test split and gated
    (``sdprune.deploy.gate``): below ``min_clear_agreement`` % agreement on the clearly decided
    images, or more than ``max_drop`` points less accurate beyond doubt, or on a non-finite
    logit, nothing is written and SdpruneError gives the figures (None: not gated on that
    figure). ``compare=False`` with both None skips it all, for latency-only benchmarks of
    untrained weights. ``method`` is the calibration (``METHODS``); ``float_ends`` leaves the
    first and last layers in float (``end_nodes``; None: the target's choice, ``TARGETS``),
    ``exclude`` names more nodes of the ``prepare``d graph to leave there.
    """
    from sdprune.deploy.runtime import check_classifier, open_session
    from sdprune.files import atomic_write

    reporter = reporter or Reporter(quiet=True)
    if target not in TARGETS:
        raise SdpruneError(f"unknown int8 target {target!r}; choose from {', '.join(TARGETS)}")
    if method not in METHODS:
        raise SdpruneError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS)}")
    check_gate(min_clear_agreement, max_drop)
    if not compare and (min_clear_agreement is not None or max_drop is not None):
        raise SdpruneError("an int8 gate needs the comparison with fp32 (compare=True)")
    settings = TARGETS[target]
    float_ends = settings["float_ends"] if float_ends is None else float_ends
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    fp32 = open_session(fp32_path)
    input_name, _ = check_classifier(fp32, fp32_path)
    batches = calibration_batches(data, calib_batches)
    result: dict[str, Any] = {}

    def write(tmp: str) -> None:  # quantize into tmp, judge it there: only a passing file is renamed into place
        with reporter.progress(f"int8: calibrating on {len(batches)} batches of training images", 1) as bar:
            try:
                floats = _quantize(fp32_path, tmp, input_name, batches, target, method, exclude, float_ends=float_ends)
            except Exception as err:  # onnxruntime's tools raise many types
                raise SdpruneError(f"int8 quantization failed: {str(err).strip().splitlines()[0][:200]}") from None
            bar.update(1)
        result.update(compare_int8(fp32, open_session(tmp), data, reporter) if compare else {})
        result.update({
            "file": str(out_path), "target": target, "format": "QDQ", "per_channel": True,
            "activation_type": settings["activation"], "weight_type": settings["weight"],
            "reduce_range": settings["reduce_range"], "calibration": {
                "batches": len(batches), "batch_size": CALIB_BATCH_SIZE, "images": sum(len(b) for b in batches),
                "split": "train", "method": METHODS[method]}, "float_ends": float_ends, "float_nodes": floats,
            "fp32_bytes": fp32_path.stat().st_size, "int8_bytes": Path(tmp).stat().st_size})
        result["size_ratio"] = result["int8_bytes"] / result["fp32_bytes"]
        if compare:
            result["gate"] = verdict(result, min_clear_agreement, max_drop)
            _show(reporter, result, out_path.name, target, data.name)
            if not result["gate"]["passed"]:
                raise SdpruneError(f"int8 check failed on {result['n']} test images: "
                                   f"{'; '.join(result['gate']['reasons'])}; no int8 model written")

    atomic_write(out_path, write)
    return result


def prepare(fp32_path: str | Path, out: str | Path) -> None:
    """ONNX Runtime's ``quant_pre_process`` (shape inference, graph optimisation) of ``fp32_path``:
    the graph ``quantize_static`` works on, whose node names ``exclude`` refers to."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with contextlib.redirect_stdout(io.StringIO()):  # the tools log to stdout; --json owns it
        quant_pre_process(str(fp32_path), str(out))


def end_nodes(prepared: str | Path) -> list[str]:
    """The first and the last layer of a ``prepare``d classifier (the Conv, Gemm or MatMul nodes
    nearest its input and its output); see TARGETS' float_ends."""
    import onnx

    layers = [n.name for n in onnx.load(str(prepared), load_external_data=False).graph.node
              if n.op_type in ("Conv", "Gemm", "MatMul")]  # a graph's nodes are stored in topological order
    return list(dict.fromkeys(layers[:1] + layers[-1:]))


def _quantize(fp32_path: Path, out: str, input_name: str, batches: list[torch.Tensor] | None, target: str,
              method: str = DEFAULT_METHOD, exclude: Sequence[str] = (), prepared: str | Path | None = None,
              cache: str | Path | None = None, float_ends: bool = False) -> list[str]:
    """quantize_static (QDQ, per-channel) of the prepared ``fp32_path`` into ``out``, with its metadata.

    ``exclude``: nodes of the prepared graph left in float (with ``float_ends``, the first and
    last layers too); returns them all. ``prepared`` reuses a ``prepare``d graph; ``cache``
    (onnxruntime >= 1.24) a JSON file of calibrated ranges, written by the first call and read
    by the next ones (``batches`` may then be None).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    settings = TARGETS[target]
    with tempfile.TemporaryDirectory(dir=Path(out).parent, prefix=".quant-") as work, \
            contextlib.redirect_stdout(io.StringIO()):  # the tools log to stdout; --json owns it
        if prepared is None:
            prepared = os.path.join(work, "prepared.onnx")
            prepare(fp32_path, prepared)
        exclude = list(dict.fromkeys([*(end_nodes(prepared) if float_ends else []), *exclude]))
        quantize_static(str(prepared), out, _reader(input_name, batches or []), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=settings["reduce_range"],
                        activation_type=getattr(QuantType, settings["activation"]),
                        weight_type=getattr(QuantType, settings["weight"]),
                        calibrate_method=getattr(CalibrationMethod, METHODS[method]),
                        nodes_to_exclude=list(exclude) or None,
                        **({"calibration_cache_path": str(cache)} if cache is not None else {}))
    proto = onnx.load(out)
    del proto.metadata_props[:]  # carry the device metadata over, plus how it was quantized
    proto.metadata_props.extend(onnx.load(str(fp32_path), load_external_data=False).metadata_props)
    proto.metadata_props.add(key="quantization", value=f"int8 static QDQ, per-channel weights, target {target}, "
                             f"{METHODS[method]} calibration" + (f", {len(exclude)} nodes in float" if exclude else ""))
    onnx.save(proto, out)
    return exclude


def _show(reporter: Reporter, result: dict[str, Any], name: str, target: str, dataset: str) -> None:
    gate = result["gate"]
    lo, hi = result["acc_change_ci"]
    reporter.table(f"int8 vs fp32 ({name}, target {target})", ["", "fp32", "int8", "change", "gate"], [
        ["file size", _bytes(result["fp32_bytes"]), _bytes(result["int8_bytes"]), f"x{result['size_ratio']:.3f}", ""],
        ["test accuracy", f"{result['fp32_acc']:.2f}%", f"{result['int8_acc']:.2f}%",
         f"{result['acc_change']:+.2f}", ""],
        [f"  {100 * result['confidence']:g}% interval", "", "", f"{lo:+.2f} to {hi:+.2f}",
         "" if gate["max_drop"] is None else f"to >= -{gate['max_drop']:g}"],
        ["agreement, clear", "", f"{result['clear_agreement']:.2f}%", f"{result['clear_flips']} flips",
         "" if gate["min_clear_agreement"] is None else f">= {gate['min_clear_agreement']:g}%"],
        ["agreement, all", "", f"{result['top1_agreement']:.2f}%", "", ""],
    ], caption=f"gate: {'pass' if gate['passed'] else 'FAIL'}; {result['n']} test images of {dataset}, "
               f"{result['clear_images']} decided clearly by fp32 (the others' two best logits within "
               f"{result['near_tie_margin']:.3g}); right under fp32 only {result['fp32_only']}, int8 only "
               f"{result['int8_only']} (McNemar p = {result['mcnemar_p']:.2g}); calibrated on "
               f"{result['calibration']['images']} training images")


def compare_int8(fp32, int8, data, reporter: Reporter | None = None, batch_size: int = 256) -> dict[str, Any]:
    """The gate's figures (``gate.compare_decisions``) of two sessions on the test split, and their
    largest |logit difference|; SdpruneError on a non-finite logit from either (NaN would just count
    as a disagreement, or not at all)."""
    from sdprune.deploy.runtime import labelled_logits, non_finite_rows

    test = data.test
    steps = 2 * -(-len(test) // batch_size)
    with (reporter or Reporter(quiet=True)).progress("int8: comparing with fp32 on the test split", steps) as bar:
        (a, b), labels = labelled_logits([fp32, int8], test, data.mean, data.std, batch_size, bar)
    for kind, logits in (("fp32", a), ("int8", b)):
        bad = non_finite_rows(logits)
        if bad:
            raise SdpruneError(f"int8 check failed: non-finite logits from the {kind} model on {bad} of "
                               f"{len(test)} test images; no int8 model written")
    return {"split": "test", "dataset": data.name, **compare_decisions(a, b, labels),
            "max_abs_logit_diff": float((a - b).abs().max()) if len(labels) else 0.0}


def _bytes(n: int) -> str:
    from sdprune.report import human

    return f"{human(n)}B"
