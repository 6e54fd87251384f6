"""Reading and evaluating an exported ONNX classifier without its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from sdprune.cli import main
from sdprune.data.bundle import load_data
from sdprune.deploy.export import export_onnx
from sdprune.deploy.runtime import evaluate_onnx, read_onnx_meta
from sdprune.depth.structure import remove_blocks
from sdprune.errors import SdpruneError
from sdprune.nets.measure import count_params
from sdprune.nets.registry import create_model
from sdprune.train.evaluate import evaluate

REMOVED = ["stages.0.1", "stages.2.2"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A pruned resnet20 (fresh weights are enough to compare ONNX Runtime with PyTorch)."""
    root = tmp_path_factory.mktemp("artifact")
    data = load_data("digits")
    torch.manual_seed(0)
    model = remove_blocks(create_model("resnet20", 10, 1), REMOVED).eval()
    blocks = [f"stages.{s}.{i}" for s in range(3) for i in range(3)]
    meta = {"model": {"name": "resnet20"}, "data": data.meta(), "blocks": blocks, "removed": REMOVED}
    export_onnx(model, meta, root, samples=16, data=data, source="/somewhere/checkpoint.pt")
    return root / "model.onnx", model, data, blocks


def test_metadata_round_trip(exported):
    path, model, data, blocks = exported
    meta = read_onnx_meta(path)
    assert meta["classes"] == data.classes and meta["input_shape"] == [1, 8, 8]
    assert meta["mean"] == data.mean and meta["std"] == data.std and meta["dataset"] == "digits"
    assert meta["kept_blocks"] == [b for b in blocks if b not in REMOVED] and meta["removed_blocks"] == REMOVED
    assert meta["source_checkpoint"] == "/somewhere/checkpoint.pt" and meta["model"] == "resnet20"
    assert meta["params"] == count_params(model) and meta["opset"] == 18


def test_evaluate_onnx_matches_pytorch(exported):
    path, model, data, _ = exported
    r = evaluate_onnx(path, batch_size=100)
    ref = evaluate(model, data.test, data.mean, data.std)
    assert r["path"] == str(path) and r["dataset"] == "digits" and r["n"] == len(data.test)
    assert abs(r["acc"] - ref["acc"]) <= 100.0 / len(data.test) + 1e-9  # at most one near-tie flips
    assert r["loss"] == pytest.approx(ref["loss"], abs=1e-4)
    assert r["file_bytes"] == path.stat().st_size and r["params"] == count_params(model)


def test_evaluate_on_a_dataset_of_another_shape_fails(exported):
    path, *_ = exported
    with pytest.raises(SdpruneError, match="the model expects"):
        evaluate_onnx(path, dataset="synthetic")


def _write(path: Path, graph, props: dict | None) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    for k, v in (props or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def not_a_classifier(path: Path, props: dict | None) -> Path:
    """A valid ONNX graph with two inputs and a 4-D output: not what sdprune exports."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 1, 8, 8])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 1, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])
    return _write(path, helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "add", [a, b], [y]), props)


def test_files_that_are_not_sdprune_classifiers(exported, tmp_path):
    path, *_ = exported
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    with pytest.raises(SdpruneError, match="not an image classifier"):
        evaluate_onnx(not_a_classifier(tmp_path / "add.onnx", props))
    with pytest.raises(SdpruneError, match="no sdprune metadata"):
        evaluate_onnx(not_a_classifier(tmp_path / "bare.onnx", None))
    (tmp_path / "junk.onnx").write_bytes(b"\x00junk")
    with pytest.raises(SdpruneError, match="not a readable ONNX file"):
        evaluate_onnx(tmp_path / "junk.onnx")
    with pytest.raises(SdpruneError, match="not found"):
        read_onnx_meta(tmp_path / "missing.onnx")
    (tmp_path / "folder.onnx").mkdir()
    with pytest.raises(SdpruneError, match="folder.onnx is a folder, not a file$"):  # there, but no model
        read_onnx_meta(tmp_path / "folder.onnx")


def test_eval_command_on_onnx(exported, tmp_path, capsys):
    path, *_ = exported
    assert main(["eval", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n"] == 359 and 0.0 <= doc["acc"] <= 100.0
    bad = not_a_classifier(tmp_path / "add.onnx", {p.key: p.value for p in onnx.load(str(path)).metadata_props})
    assert main(["eval", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sdprune eval: error:") and "not an image classifier" in err[0]
