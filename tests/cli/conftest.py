"""The fuzz corpus's material: one tiny valid checkpoint and ONNX model to mutate, and the
check every malformed input must pass (exit 2, one line on stderr, no traceback, nothing written)."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch

from sdprune.cli import main

CLASSES = [str(i) for i in range(10)]


@pytest.fixture(scope="session")
def valid_checkpoint() -> dict:
    """A resnet20 training checkpoint for digits (as `sdprune train` writes it, with optimizer momentum),
    built directly rather than trained: it only has to be well formed."""
    from sdprune.data.bundle import load_data
    from sdprune.depth.schedule import set_survival, survival_schedule
    from sdprune.nets.registry import create_model
    from sdprune.train.checkpoint import FORMAT, SCHEMA
    from sdprune.train.config import TrainConfig
    from sdprune.train.trainer import build_sgd, checkpoint_meta

    data = load_data("digits")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model("resnet20", num_classes=10, in_channels=1)
    set_survival(model, survival_schedule("linear", 9))
    optimizer = build_sgd(model, 0.1, 0.9, True, 1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # momentum buffers now exist, one per parameter
    meta = checkpoint_meta(TrainConfig(model="resnet20", epochs=2, batch_size=128), data, model, epoch=1, step=12,
                           metrics={})
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"format": FORMAT, "schema": SCHEMA, "meta": meta, "state_dict": state, "optimizer": optimizer.state_dict()}


def tiny_onnx(input_type: str = "float", input_shape=("batch", 1, 8, 8), output_rank: int = 2,
              extra_input: bool = False, metadata: dict[str, str | None] | None = None) -> bytes:
    """A tiny sdprune-style classifier for digits (Flatten + Gemm, 1x8x8 -> 10) with sdprune's metadata
    (``metadata``: values replaced, None removes a key), or one broken in a chosen way."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(torch.randn(64, 10, generator=torch.Generator().manual_seed(0)).numpy(), "w")
    axes = numpy_helper.from_array(torch.tensor([2]).numpy(), "axes")
    nodes = [helper.make_node("Cast", ["input"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("Flatten", ["x"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w"], ["scores" if output_rank == 3 else "logits"])]
    if output_rank == 3:
        nodes.append(helper.make_node("Unsqueeze", ["scores", "axes"], ["logits"]))
    elem = {"float": TensorProto.FLOAT, "int64": TensorProto.INT64}[input_type]
    inputs = [helper.make_tensor_value_info("input", elem, list(input_shape))]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["batch", 3]))
    out_shape = ["batch", 10] + ([1] if output_rank == 3 else [])
    graph = helper.make_graph(nodes, "tiny", inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                                                    out_shape)],
                              initializer=[weight, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    props = {**onnx_metadata(), **(metadata or {})}
    for key, value in props.items():
        if value is not None:
            model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def onnx_metadata() -> dict[str, str]:
    """The metadata_props `sdprune export` writes, for the tiny model."""
    import json

    return {"sdprune_version": "test", "model": "tiny", "dataset": "digits", "classes": json.dumps(CLASSES),
            "input_shape": "[1, 8, 8]", "mean": "[0.3]", "std": "[0.4]", "params": "640"}


def save_payload(payload, path: Path) -> Path:
    """Write a (possibly malformed) checkpoint payload as torch.save does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(buffer.getvalue())
    return path


def mutated(payload: dict, change) -> dict:
    """A deep copy of ``payload`` changed by ``change(copy)`` (which may also return a replacement)."""
    copied = copy.deepcopy(payload)
    replaced = change(copied)
    return copied if replaced is None else replaced


@pytest.fixture
def damaged(valid_checkpoint, tmp_path):
    """``damaged(change)``: ``tmp_path/run/checkpoint.pt`` holding the valid checkpoint changed by ``change``."""
    return lambda change: save_payload(mutated(valid_checkpoint, change), tmp_path / "run" / "checkpoint.pt")


@pytest.fixture
def onnx_file(tmp_path):
    """``onnx_file(**options)``: ``tmp_path/model.onnx`` holding ``tiny_onnx(**options)``."""
    def write(**options) -> Path:
        path = tmp_path / "model.onnx"
        path.write_bytes(tiny_onnx(**options))
        return path
    return write


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file (size, modification time) and folder under ``root``: what "nothing written" compares.

    A folder's own time is left out: a probe file created and removed at once (proving a location
    writable) changes it without writing anything."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
            for p in root.rglob("*")}


@pytest.fixture
def refused(tmp_path, monkeypatch, capsys):
    """``refused(argv)``: the CLI, in-process, must exit 2 with one line on stderr, no traceback, nothing on
    stdout, and leave ``tmp_path`` (the working folder, the runs folder and every default output) unchanged.
    Returns the error line."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SDPRUNE_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("SDPRUNE_CACHE", str(tmp_path / "cache"))

    def run(argv: list[str]) -> str:
        before = snapshot(tmp_path)
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
        out, err = capsys.readouterr()
        assert code == 2, f"exit {code}: {err}"
        assert out == "", out
        assert err.count("\n") == 1 and err.endswith("\n") and err.startswith("sdprune"), err
        assert "Traceback" not in err and "error:" in err, err
        assert snapshot(tmp_path) == before, "something was written"
        return err.strip()

    return run
