"""int8 static quantization: the quantized model is small, QDQ per-channel, and still classifies."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from onnx import numpy_helper

from sdprune.data.bundle import data_for_checkpoint
from sdprune.deploy.export import export_onnx
from sdprune.deploy.quantize import calibration_batches, compare_int8, quantize_int8
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
    r = quantize_int8(fp32, out, data, calib_batches=4, min_agreement=90.0)
    assert r["n"] == len(data.test) and r["split"] == "test" and r["min_agreement"] == 90.0
    assert r["fp32_acc"] > 40.0  # the fixture really learned something (chance is 10%)
    assert r["int8_acc"] > 40.0 and abs(r["acc_change"]) <= 5.0
    assert r["top1_agreement"] >= 90.0
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
    assert list(tmp_path.iterdir()) == []


def agreeing(percent: float, monkeypatch) -> None:
    """Make every int8 model agree with fp32 on exactly ``percent`` % of the test images."""
    from sdprune.deploy import quantize

    real = quantize.compare_int8
    monkeypatch.setattr(quantize, "compare_int8", lambda *a, **k: {**real(*a, **k), "top1_agreement": percent})


def test_int8_below_min_agreement_is_not_written(exported, tmp_path, monkeypatch):
    fp32, data = exported
    out = tmp_path / "model.int8.onnx"
    agreeing(98.0, monkeypatch)
    with pytest.raises(SdpruneError, match=r"int8 check failed: top-1 agreement with fp32 98\.00% < "
                                           r"--int8-min-agreement 99% on \d+ test images \(accuracy fp32 "):
        quantize_int8(fp32, out, data, calib_batches=1, min_agreement=99.0)
    assert list(tmp_path.iterdir()) == []  # no int8 file, no temporary one
    r = quantize_int8(fp32, out, data, calib_batches=1, min_agreement=98.0)  # at the gate: passes
    assert r["top1_agreement"] == 98.0 and list(tmp_path.iterdir()) == [out]


def test_int8_gate_settings(exported, tmp_path):
    fp32, data = exported
    for bad in (-1.0, 100.5, float("nan")):
        with pytest.raises(SdpruneError, match="--int8-min-agreement must be between 0 and 100"):
            quantize_int8(fp32, tmp_path / "q.onnx", data, min_agreement=bad)
    with pytest.raises(SdpruneError, match="needs the comparison"):
        quantize_int8(fp32, tmp_path / "q.onnx", data, compare=False)  # a gate that would never be checked
    assert list(tmp_path.iterdir()) == []
    # latency benchmarks of random weights: neither compared nor gated
    r = quantize_int8(fp32, tmp_path / "q.onnx", data, calib_batches=1, compare=False, min_agreement=None)
    assert "top1_agreement" not in r and r["min_agreement"] is None and (tmp_path / "q.onnx").is_file()


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
