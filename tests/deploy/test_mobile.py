"""ONNX Runtime's mobile format: the .ort file loads, runs, and matches the ONNX model."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from sdprune.data.bundle import load_data
from sdprune.data.images import normalize
from sdprune.deploy.export import export_onnx
from sdprune.deploy.mobile import CONFIG_NAME, convert_to_ort, read_operator_config
from sdprune.errors import SdpruneError


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("mobile")
    data = load_data("digits")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    meta = {"model": {"name": "tiny"}, "data": data.meta(), "blocks": [], "removed": []}
    export_onnx(model, meta, root / "export", samples=8, data=data)
    return root / "export" / "model.onnx", data


def test_ort_file_loads_and_computes_what_the_onnx_file_does(exported, tmp_path):
    path, data = exported
    r = convert_to_ort([path], tmp_path)
    ort_file = tmp_path / "model.ort"
    assert r["files"] == [str(ort_file)] and r["config"] == str(tmp_path / CONFIG_NAME)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CONFIG_NAME, "model.ort"])  # no work folder left
    assert r["checks"][0]["output_shape"] == [1, 10]
    x = normalize(data.test.images[:5], data.mean, data.std).numpy()
    got = ort.InferenceSession(str(ort_file), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, want, atol=1e-5)
    # the operator config a reduced-size build needs names the operators of this graph
    ops = read_operator_config(tmp_path / CONFIG_NAME)
    flat = {op for names in ops.values() for op in names}
    assert any(k.startswith("ai.onnx;") for k in ops) and flat & {"Conv", "FusedConv"} and "Gemm" in flat
    assert str(tmp_path) not in (tmp_path / CONFIG_NAME).read_text()  # no temporary paths inside


def test_missing_model_is_an_error(tmp_path):
    with pytest.raises(SdpruneError, match="not found"):
        convert_to_ort([tmp_path / "none.onnx"], tmp_path)
    assert list(tmp_path.iterdir()) == []
