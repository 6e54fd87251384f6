"""ONNX Runtime's mobile format: the .ort file loads, runs, and matches the ONNX model."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from sdprune.data.bundle import load_data
from sdprune.data.images import normalize
from sdprune.deploy.export import export_onnx
from sdprune.deploy.mobile import CONFIG_NAME, check_ort, convert_to_ort, read_operator_config
from sdprune.errors import SdpruneError


def _tiny(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """model.onnx of a tiny network, and another.onnx: the same graph with other weights."""
    root = tmp_path_factory.mktemp("mobile")
    data = load_data("digits")
    meta = {"model": {"name": "tiny"}, "data": data.meta(), "blocks": [], "removed": []}
    export_onnx(_tiny(0), meta, root / "export", samples=8, data=data)
    export_onnx(_tiny(1), meta, root / "other", samples=8, data=data)
    return root / "export" / "model.onnx", data, root / "other" / "model.onnx"


def test_ort_file_loads_and_computes_what_the_onnx_file_does(exported, tmp_path):
    path, data, _ = exported
    r = convert_to_ort([path], tmp_path, data, samples=64)
    ort_file = tmp_path / "model.ort"
    assert r["files"] == [str(ort_file)] and r["config"] == str(tmp_path / CONFIG_NAME)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CONFIG_NAME, "model.ort"])  # no work folder left
    # checked on 64 real test images against the file it came from
    (check,) = r["checks"]
    assert check["file"] == str(ort_file) and check["reference"] == str(path) and check["images"] == 64
    assert check["top1_agreement"] == 100.0 and 0 <= check["max_abs_diff"] <= check["atol"] == 1e-4
    assert check["sample"]["split"] == "test" and check["sample"]["classes"] == 10
    x = normalize(data.test.images[:5], data.mean, data.std).numpy()
    got = ort.InferenceSession(str(ort_file), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, want, atol=1e-5)
    # the operator config a reduced-size build needs names the operators of this graph
    ops = read_operator_config(tmp_path / CONFIG_NAME)
    flat = {op for names in ops.values() for op in names}
    assert any(k.startswith("ai.onnx;") for k in ops) and flat & {"Conv", "FusedConv"} and "Gemm" in flat
    assert str(tmp_path) not in (tmp_path / CONFIG_NAME).read_text()  # no temporary paths inside


def test_ort_file_that_computes_something_else_is_not_written(exported, tmp_path, monkeypatch):
    path, data, other = exported
    real_run = subprocess.run

    def converter_swaps_the_model(cmd, **kwargs):  # a converter that runs fine on a zero input, but wrongly
        src = Path(cmd[3]) / "model.onnx"
        src.unlink()  # a link to the caller's file: replace it, never write through it
        shutil.copyfile(other, src)
        return real_run(cmd, **kwargs)

    monkeypatch.setattr(subprocess, "run", converter_swaps_the_model)
    with pytest.raises(SdpruneError, match=r"model\.ort does not compute what model\.onnx does: max \|logit diff\|"):
        convert_to_ort([path], tmp_path, data, samples=16)
    assert list(tmp_path.iterdir()) == []  # neither the .ort file nor the operator config


def test_non_finite_logits_fail_the_ort_check(exported, tmp_path):
    import onnx
    from onnx import numpy_helper

    path, data, _ = exported
    proto = onnx.load(str(path))
    bias = next(t for t in proto.graph.initializer if numpy_helper.to_array(t).shape == (10,))  # the classifier's
    bias.CopyFrom(numpy_helper.from_array(np.full(10, np.nan, np.float32), bias.name))
    onnx.save(proto, str(tmp_path / "nan.onnx"))
    with pytest.raises(SdpruneError, match="non-finite logits on 8 of 8 test images"):
        check_ort(tmp_path / "nan.onnx", path, data.test.images[:8], data)


def test_missing_model_is_an_error(exported, tmp_path):
    _, data, _ = exported
    with pytest.raises(SdpruneError, match="not found"):
        convert_to_ort([tmp_path / "none.onnx"], tmp_path, data)
    assert list(tmp_path.iterdir()) == []


def test_the_exports_atol_is_the_fp32_tolerance(exported, tmp_path):
    path, data, _ = exported
    r = convert_to_ort([path], tmp_path, data, samples=16, atol=5e-4)
    assert r["checks"][0]["atol"] == 5e-4 and r["checks"][0]["kind"] == "fp32"


def test_near_ties_may_flip_but_decided_images_may_not():
    from sdprune.deploy.mobile import compare_logits

    want = torch.tensor([[0.0, 0.0005, -1.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    near_tie = torch.tensor([[0.0005, 0.0, -1.0], [2.0, 0.0, 0.0]], dtype=torch.float64)  # margin 5e-4 <= 1e-3
    r = compare_logits(near_tie, want, 1e-3)
    assert r["ok"] and r["near_ties"] == 1 and r["top1_agreement"] == 50.0
    want[0, 1] = 0.0015  # now a margin of 1.5e-3: decided, and a flip within 1e-3 of every logit must fail
    flipped = torch.tensor([[0.0009, 0.0006, -1.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    r = compare_logits(flipped, want, 1e-3)
    assert r["max_abs_diff"] <= 1e-3 and r["near_ties"] == 0 and not r["ok"]


def test_an_int8_file_for_another_cpu_is_held_to_its_decisions_not_its_logits():
    from sdprune.deploy.mobile import compare_logits

    want = torch.tensor([[0.5, 0.0, -0.5], [0.0, 0.4, 0.1]])
    moved = want + torch.tensor([[0.12, 0.0, 0.0], [0.0, -0.05, 0.0]])  # far off, same top-1 classes
    assert not compare_logits(moved, want, 0.025)["ok"]  # bounded: every logit within atol
    r = compare_logits(moved, want, 0.025, bound=False)
    assert r["ok"] and r["max_abs_diff"] == pytest.approx(0.12) and not r["bound"]
    flipped = want + torch.tensor([[0.0, 0.0, 0.0], [0.0, -0.35, 0.0]])  # image 2 decided (margin 0.3), flips
    assert not compare_logits(flipped, want, 0.025, bound=False)["ok"]


def test_int8_tolerance_is_exact_where_the_file_was_optimised_for_this_cpu(monkeypatch):
    from sdprune.deploy import mobile

    want = torch.tensor([[4.0, -2.0]])
    monkeypatch.setattr(mobile.platform, "machine", lambda: "x86_64")
    assert mobile.ort_tolerance(True, "amd64", want, 1e-4) == 1e-4  # the kernels this CPU runs for the .onnx
    assert mobile.ort_tolerance(True, "arm", want, 1e-4) == pytest.approx(0.2)  # 5% of the largest |logit|
    assert mobile.ort_tolerance(False, "arm", want, 1e-4) == 1e-4
    monkeypatch.setattr(mobile.platform, "machine", lambda: "aarch64")
    assert mobile.ort_tolerance(True, "arm", want, 1e-4) == 1e-4
    assert mobile.ort_tolerance(True, "amd64", want, 1e-4) == pytest.approx(0.2)
