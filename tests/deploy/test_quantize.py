"""int8 static quantization: the quantized model is small, QDQ per-channel, and still classifies."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from sdprune.data.bundle import data_for_checkpoint
from sdprune.deploy.export import export_onnx
from sdprune.deploy.quantize import calibration_batches, quantize_int8
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
    r = quantize_int8(fp32, out, data, calib_batches=4)
    assert r["n"] == len(data.test) and r["split"] == "test"
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
