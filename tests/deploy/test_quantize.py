"""int8 static quantization: the quantized model is small, QDQ per-channel, still classifies, and is gated."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from onnx import numpy_helper

from sdprune.data.bundle import data_for_checkpoint
from sdprune.deploy.export import export_onnx
from sdprune.deploy.gate import DEFAULT_MAX_DROP, DEFAULT_MIN_CLEAR_AGREEMENT
from sdprune.deploy.quantize import METHODS, calibration_batches, compare_int8, quantize_int8
from sdprune.errors import SdpruneError
from sdprune.train.checkpoint import build_model, load_checkpoint
from sdprune.train.config import TrainConfig
from sdprune.train.loop import train


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, object]:
    """A resnet20 trained for 2 epochs on the embedded digits (well above chance), exported."""
    root = tmp_path_factory.mktemp("quantize")
    train(TrainConfig(model="resnet20", epochs=2, out=str(root / "run")))
    ckpt = load_checkpoint(root / "run" / "checkpoint.pt")
    data = data_for_checkpoint(ckpt["meta"])
    export_onnx(build_model(ckpt), ckpt["meta"], root / "export", samples=16, data=data)
    return root / "export" / "model.onnx", data


def test_int8_still_classifies_the_digits(exported):
    fp32, data = exported
    out = fp32.with_name("model.int8.onnx")
    r = quantize_int8(fp32, out, data, calib_batches=4)  # a healthy int8 model passes the default gate
    assert r["gate"] == {"min_clear_agreement": DEFAULT_MIN_CLEAR_AGREEMENT, "max_drop": DEFAULT_MAX_DROP,
                         "passed": True, "reasons": []}
    assert r["n"] == len(data.test) and r["split"] == "test"
    assert r["fp32_acc"] > 40.0  # the fixture really learned something (chance is 10%)
    assert r["int8_acc"] > 40.0 and abs(r["acc_change"]) <= 5.0
    lo, hi = r["acc_change_ci"]
    assert lo <= r["acc_change"] <= hi and r["confidence"] == 0.95
    assert r["int8_acc"] - r["fp32_acc"] == pytest.approx(100.0 * (r["int8_only"] - r["fp32_only"]) / r["n"])
    # most images are decided clearly, and int8 decides every one of those as fp32 does
    assert r["clear_images"] + r["near_ties"] == r["n"] and r["clear_images"] > r["n"] / 2
    assert r["clear_agreement"] >= DEFAULT_MIN_CLEAR_AGREEMENT and r["top1_agreement"] >= 90.0
    assert r["size_ratio"] < 0.4 and r["int8_bytes"] == out.stat().st_size
    assert r["calibration"] == {"batches": 4, "batch_size": 32, "images": 128, "split": "train", "method": "MinMax"}

    proto = onnx.load(str(out))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 5 and ops.count("DequantizeLinear") > 5
    # per-channel weights: some convolution weight has one scale per output channel
    scales = [numpy_helper.to_array(t) for t in proto.graph.initializer if t.name.endswith("_scale")]
    assert any(s.ndim == 1 and s.size == 64 for s in scales)
    # the device metadata travels with the int8 file
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["dataset"] == "digits" and "int8" in props["quantization"] and "classes" in props
    # the first and the last layer stay float: their weights are plain initializers, every other layer's
    # come through a DequantizeLinear
    assert r["float_ends"] and len(r["float_nodes"]) == 2
    produced_by = {o: n.op_type for n in proto.graph.node for o in n.output}
    layers = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    assert [n.name for n in layers if produced_by.get(n.input[1]) != "DequantizeLinear"] == r["float_nodes"]
    assert [layers[0].name, layers[-1].name] == r["float_nodes"] and len(layers) > 10


def test_x86_quantizes_every_layer(exported, tmp_path):
    """With Percentile calibration (MinMax, the default, quantizes for x86 in the broken-model test)."""
    fp32, data = exported
    method = "percentile"
    r = quantize_int8(fp32, tmp_path / "q.onnx", data, target="x86", method=method)  # the default gate
    assert r["gate"]["passed"] and r["clear_agreement"] >= DEFAULT_MIN_CLEAR_AGREEMENT  # healthy on x86 too
    assert r["float_nodes"] == [] and not r["float_ends"] and r["calibration"]["method"] == METHODS[method]
    proto = onnx.load(str(tmp_path / "q.onnx"))
    produced_by = {o: n.op_type for n in proto.graph.node for o in n.output}
    assert all(produced_by.get(n.input[1]) == "DequantizeLinear" for n in proto.graph.node
               if n.op_type in ("Conv", "Gemm"))


def test_calibration_uses_training_images_only(exported):
    from sdprune.data.images import normalize

    _, data = exported
    batches = calibration_batches(data, 3, batch_size=8)
    assert [tuple(b.shape) for b in batches] == [(8, 1, 8, 8)] * 3
    train_x = normalize(data.train.images, data.mean, data.std).flatten(1)
    for x in batches[0].flatten(1):  # every calibration image is a training image
        assert bool((train_x == x).all(dim=1).any())
    assert len({tuple(b.flatten().tolist()) for b in batches}) == 3  # distinct batches, not one repeated


def test_bad_calibration_and_target(exported, tmp_path):
    fp32, data = exported
    with pytest.raises(SdpruneError, match="--calib-batches"):
        quantize_int8(fp32, tmp_path / "q.onnx", data, calib_batches=0)
    with pytest.raises(SdpruneError, match="int8 target"):
        quantize_int8(fp32, tmp_path / "q.onnx", data, target="gpu")
    with pytest.raises(SdpruneError, match="unknown calibration method 'entropy'; choose from minmax, percentile"):
        quantize_int8(fp32, tmp_path / "q.onnx", data, method="entropy")  # MinMax under another name here
    assert list(tmp_path.iterdir()) == []


def miscalibrated(broken: str, monkeypatch) -> None:
    """Make int8 calibrate on images the network never sees: constant ones (every pixel the training
    mean), or images left unnormalised (pixel / 255, the mean and std forgotten)."""
    from sdprune.deploy import quantize

    real = quantize.calibration_batches

    def batches(data, calib_batches, batch_size=32):
        good = real(data, calib_batches, batch_size)
        mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
        return [torch.zeros_like(b) if broken == "constant" else b * std + mean for b in good]

    monkeypatch.setattr(quantize, "calibration_batches", batches)


@pytest.mark.parametrize("broken, target", [("constant", "arm"), ("unnormalised", "arm"), ("constant", "x86")])
def test_a_broken_int8_model_fails_the_default_gate(exported, tmp_path, monkeypatch, broken, target):
    from sdprune.deploy import quantize

    fp32, data = exported
    miscalibrated(broken, monkeypatch)
    judged, real = [], quantize.verdict
    monkeypatch.setattr(quantize, "verdict", lambda figures, *gate: judged.append(dict(figures)) or real(figures, *gate))
    with pytest.raises(SdpruneError) as err:
        quantize_int8(fp32, tmp_path / "model.int8.onnx", data, calib_batches=4, target=target)
    message = str(err.value)
    assert message.startswith(f"int8 check failed on {len(data.test)} test images: top-1 agreement ")
    assert f"% < {DEFAULT_MIN_CLEAR_AGREEMENT:g}% on the " in message and " clearly decided test images (" in message
    assert f"all below -{DEFAULT_MAX_DROP:g}; no int8 model written" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []  # no int8 file, no temporary one
    # the figures the gate judged show why it failed, and the message gives them
    (r,) = judged
    assert r["clear_agreement"] < 90.0 and r["acc_change_ci"][1] < -5.0
    assert f"top-1 agreement {r['clear_agreement']:.2f}% < " in message
    if (broken, target) == ("constant", "arm"):  # gated on nothing, the same model is written
        again = quantize_int8(fp32, tmp_path / "model.int8.onnx", data, calib_batches=4, target=target,
                              min_clear_agreement=None, max_drop=None)
        assert again["gate"]["passed"] and (tmp_path / "model.int8.onnx").is_file()
        assert {k: again[k] for k in r} == r


def test_int8_gate_settings(exported, tmp_path):
    fp32, data = exported
    with pytest.raises(SdpruneError, match="--int8-min-clear-agreement must be between 0 and 100"):
        quantize_int8(fp32, tmp_path / "q.onnx", data, min_clear_agreement=101.0)
    with pytest.raises(SdpruneError, match="--int8-max-drop must be between 0 and 100"):
        quantize_int8(fp32, tmp_path / "q.onnx", data, max_drop=-1.0)
    with pytest.raises(SdpruneError, match="needs the comparison"):
        quantize_int8(fp32, tmp_path / "q.onnx", data, compare=False)  # a gate that would never be checked
    assert list(tmp_path.iterdir()) == []
    # latency benchmarks of random weights: neither compared nor gated
    r = quantize_int8(fp32, tmp_path / "q.onnx", data, calib_batches=1, compare=False, min_clear_agreement=None,
                      max_drop=None)
    assert "top1_agreement" not in r and "gate" not in r and (tmp_path / "q.onnx").is_file()


def test_non_finite_int8_logits_fail_the_comparison(exported):
    from types import SimpleNamespace

    import numpy as np

    from sdprune.deploy.runtime import open_session

    fp32, data = exported

    class NanSession:  # a broken int8 model: NaN where fp32 is fine (NaN != argmax would hide it)
        def get_inputs(self):
            return [SimpleNamespace(name="input")]

        def run(self, _, feeds):
            return [np.full((len(feeds["input"]), 10), np.nan, np.float32)]

    with pytest.raises(SdpruneError, match=f"non-finite logits from the int8 model on {len(data.test)} of "):
        compare_int8(open_session(fp32), NanSession(), data)


def test_calibration_draws_from_every_class(sorted_bundle, label_of):
    data = sorted_bundle
    batches = calibration_batches(data, 2, batch_size=16)  # 32 of 300 images; the first 32 are classes 0 and 1
    raw = [(b * torch.tensor(data.std).view(1, -1, 1, 1) + torch.tensor(data.mean).view(1, -1, 1, 1)) * 255
           for b in batches]
    labels = label_of(torch.cat(raw).round().to(torch.uint8))
    assert len(set(labels)) >= 8
    assert calibration_batches(data, 2, batch_size=16)[1].equal(batches[1])  # seeded: the same every time
