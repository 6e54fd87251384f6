"""int8 static quantization of an exported classifier with ONNX Runtime's own tools.

ONNX Runtime's path for CNNs: ``quant_pre_process`` (shape inference and graph
optimisation), then ``quantize_static`` in QDQ format with per-channel weights, its
activation ranges calibrated on training images (never test images). The int8 model is
judged against the fp32 one on the whole test split (top-1 agreement and accuracy change)
and is only put in place when its top-1 agreement reaches ``min_agreement``.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdprune.errors import SdpruneError
from sdprune.report import Reporter

if TYPE_CHECKING:
    import torch

DEFAULT_CALIB_BATCHES = 8
CALIB_BATCH_SIZE = 32
CALIB_SEED = 0
# The least top-1 agreement (%) with the fp32 model, on the test split, an int8 model must
# reach to be written: int8 is gated as fp32 parity is (measured: 100% for a resnet20
# trained to 97.5% on digits; 96-97.5% for one stopped at 72% after 2 epochs).
DEFAULT_MIN_AGREEMENT = 99.0
# Settings per target CPU, from quantize_static's own guidance. ARM (the phone): signed int8
# activations (QInt8) with the calibrated asymmetric range (a zero point per tensor;
# ActivationSymmetric is not set). Symmetric activations bought nothing measurable on
# digits (resnet20, 359 test images, vs fp32: 100% top-1 agreement and 97.49% accuracy
# either way after 15 epochs; 97.5% vs 96.9% agreement, 71.0% vs 72.7% accuracy after 2),
# so the range is not halved for them. x86 without VNNI multiplies u8 x s8 pairs with
# 16-bit saturation (vpmaddubsw), so activations are u8 and weights are cut to 7 bits there.
TARGETS = {
    "arm": {"activation": "QInt8", "weight": "QInt8", "reduce_range": False},
    "x86": {"activation": "QUInt8", "weight": "QInt8", "reduce_range": True},
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


def check_min_agreement(min_agreement: float | None) -> None:
    """Reject an int8 gate outside [0, 100] % (None, no gate, is allowed)."""
    if min_agreement is not None and not 0 <= min_agreement <= 100:  # also rejects NaN
        raise SdpruneError(f"--int8-min-agreement must be between 0 and 100, got {min_agreement:g}")


def quantize_int8(fp32_path: str | Path, out_path: str | Path, data, calib_batches: int = DEFAULT_CALIB_BATCHES,
                  target: str = "arm", reporter: Reporter | None = None, compare: bool = True,
                  min_agreement: float | None = DEFAULT_MIN_AGREEMENT) -> dict[str, Any]:
    """Write an int8 QDQ copy of ``fp32_path`` once it has been measured against the fp32 model.

    ``data`` is the checkpoint's DataBundle: calibration draws ``calib_batches`` batches of
    its training images; agreement and accuracy are measured on its test split. Below
    ``min_agreement`` % top-1 agreement (or on a non-finite logit) nothing is written and
    SdpruneError gives the figures. ``compare=False, min_agreement=None`` skips both, for
    latency-only benchmarks of untrained weights.
    """
    from sdprune.deploy.runtime import check_classifier, open_session
    from sdprune.files import atomic_write

    reporter = reporter or Reporter(quiet=True)
    if target not in TARGETS:
        raise SdpruneError(f"unknown int8 target {target!r}; choose from {', '.join(TARGETS)}")
    check_min_agreement(min_agreement)
    if min_agreement is not None and not compare:
        raise SdpruneError("an int8 agreement gate needs the comparison with fp32 (compare=True)")
    settings = TARGETS[target]
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    fp32 = open_session(fp32_path)
    input_name, _ = check_classifier(fp32, fp32_path)
    batches = calibration_batches(data, calib_batches)
    result: dict[str, Any] = {}

    def write(tmp: str) -> None:  # quantize into tmp, judge it there: only a passing file is renamed into place
        with reporter.progress(f"int8: calibrating on {len(batches)} batches of training images", 1) as bar:
            try:
                _quantize(fp32_path, tmp, input_name, batches, target)
            except Exception as err:  # onnxruntime's tools raise many types
                raise SdpruneError(f"int8 quantization failed: {str(err).strip().splitlines()[0][:200]}") from None
            bar.update(1)
        result.update(compare_int8(fp32, open_session(tmp), data, reporter) if compare else {})
        result.update({
            "file": str(out_path), "target": target, "format": "QDQ", "per_channel": True,
            "activation_type": settings["activation"], "weight_type": settings["weight"],
            "reduce_range": settings["reduce_range"], "calibration": {
                "batches": len(batches), "batch_size": CALIB_BATCH_SIZE, "images": sum(len(b) for b in batches),
                "split": "train", "method": "MinMax"},
            "fp32_bytes": fp32_path.stat().st_size, "int8_bytes": Path(tmp).stat().st_size,
            "min_agreement": min_agreement})
        result["size_ratio"] = result["int8_bytes"] / result["fp32_bytes"]
        if compare:
            _show(reporter, result, out_path.name, target, data.name)
        if min_agreement is not None and result["top1_agreement"] < min_agreement:
            raise SdpruneError(
                f"int8 check failed: top-1 agreement with fp32 {result['top1_agreement']:.2f}% < "
                f"--int8-min-agreement {min_agreement:g}% on {result['n']} test images (accuracy fp32 "
                f"{result['fp32_acc']:.2f}%, int8 {result['int8_acc']:.2f}%); no int8 model written")

    atomic_write(out_path, write)
    return result


def _quantize(fp32_path: Path, out: str, input_name: str, batches: list[torch.Tensor], target: str) -> None:
    """quant_pre_process + quantize_static (QDQ, per-channel) into ``out``, with the fp32 file's metadata."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    settings = TARGETS[target]
    with tempfile.TemporaryDirectory(dir=Path(out).parent, prefix=".quant-") as work, \
            contextlib.redirect_stdout(io.StringIO()):  # the tools log to stdout; --json owns it
        prepared = os.path.join(work, "prepared.onnx")
        quant_pre_process(str(fp32_path), prepared)
        quantize_static(prepared, out, _reader(input_name, batches), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=settings["reduce_range"],
                        activation_type=getattr(QuantType, settings["activation"]),
                        weight_type=getattr(QuantType, settings["weight"]),
                        calibrate_method=CalibrationMethod.MinMax)
    proto = onnx.load(out)
    del proto.metadata_props[:]  # carry the device metadata over, plus how it was quantized
    proto.metadata_props.extend(onnx.load(str(fp32_path), load_external_data=False).metadata_props)
    proto.metadata_props.add(key="quantization", value=f"int8 static QDQ, per-channel weights, target {target}")
    onnx.save(proto, out)


def _show(reporter: Reporter, result: dict[str, Any], name: str, target: str, dataset: str) -> None:
    reporter.table(f"int8 vs fp32 ({name}, target {target})", ["", "fp32", "int8", "change"], [
        ["file size", _bytes(result["fp32_bytes"]), _bytes(result["int8_bytes"]),
         f"x{result['size_ratio']:.3f}"],
        ["test accuracy", f"{result['fp32_acc']:.2f}%", f"{result['int8_acc']:.2f}%", f"{result['acc_change']:+.2f}"],
        ["top-1 agreement", "", f"{result['top1_agreement']:.2f}%", ""],
    ], caption=f"{result['n']} test images of {dataset}; calibrated on {result['calibration']['images']} "
               "training images")


def compare_int8(fp32, int8, data, reporter: Reporter | None = None, batch_size: int = 256) -> dict[str, Any]:
    """Top-1 agreement of two sessions and their accuracies on the test split (SdpruneError on a
    non-finite logit from either: NaN would just count as a disagreement, or not at all)."""
    from sdprune.deploy.runtime import labelled_logits, non_finite_rows
    from sdprune.train.evaluate import score_logits

    test = data.test
    steps = 2 * -(-len(test) // batch_size)
    with (reporter or Reporter(quiet=True)).progress("int8: comparing with fp32 on the test split", steps) as bar:
        (a, b), labels = labelled_logits([fp32, int8], test, data.mean, data.std, batch_size, bar)
    for kind, logits in (("fp32", a), ("int8", b)):
        bad = non_finite_rows(logits)
        if bad:
            raise SdpruneError(f"int8 check failed: non-finite logits from the {kind} model on {bad} of "
                               f"{len(test)} test images; no int8 model written")
    acc_a, acc_b = score_logits(a, labels)["acc"], score_logits(b, labels)["acc"]
    return {"n": len(labels), "split": "test", "dataset": data.name,
            "top1_agreement": 100.0 * float((a.argmax(1) == b.argmax(1)).float().mean()),
            "fp32_acc": acc_a, "int8_acc": acc_b, "acc_change": acc_b - acc_a,
            "max_abs_logit_diff": float((a - b).abs().max())}


def _bytes(n: int) -> str:
    from sdprune.report import human

    return f"{human(n)}B"
