"""`sdprune bench`: latency per batch size, ratios to the first model, interleaved rounds."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from sdprune.cli import main
from sdprune.data.bundle import load_data
from sdprune.deploy.export import export_onnx
from sdprune.deploy.latency import _time_interleaved, bench_onnx


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    data = load_data("digits")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 10)).eval()
    meta = {"model": {"name": "tiny"}, "data": data.meta(), "blocks": [], "removed": []}
    export_onnx(model, meta, root / "a", samples=8, data=data)
    (root / "b").mkdir()
    shutil.copy(root / "a" / "model.onnx", root / "b" / "model.onnx")
    return [root / "a" / "model.onnx", root / "b" / "model.onnx"]


def test_bench_reports_p50_p90_and_ratios(models):
    r = bench_onnx(models, threads=1, warmup=1, repeats=7, batch_sizes=(1, 4))
    assert r["threads"] == 1 and r["repeats"] == 7 and r["batch_sizes"] == [1, 4]
    assert r["spinning"] is False  # interleaved sessions must not spin while another one is timed
    assert [m["path"] for m in r["models"]] == [str(p) for p in models]
    for m in r["models"]:
        assert set(m["latency"]) == {"1", "4"}
        for lat in m["latency"].values():
            assert 0 < lat["p50_ms"] <= lat["p90_ms"]
    assert all(lat["ratio"] == 1.0 for lat in r["models"][0]["latency"].values())
    assert all(0.2 < lat["ratio"] < 5.0 for lat in r["models"][1]["latency"].values())  # the same file twice


class FakeSession:
    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    def run(self, _outputs, _feed):
        self.log.append(self.name)


class NullBar:
    def update(self, *_args, **_kwargs) -> None:
        pass


def test_models_are_timed_round_robin_after_warmup():
    log: list[str] = []
    sessions = [FakeSession(n, log) for n in "abc"]
    times = _time_interleaved(sessions, [{}] * 3, warmup=2, repeats=4, bar=NullBar(), batch=1)
    assert log[:6] == list("abcabc")  # warm-up: every model, before any timing
    rounds = [log[6 + 3 * i: 9 + 3 * i] for i in range(4)]
    assert all(sorted(r) == list("abc") for r in rounds)  # each round runs each model once
    assert [r[0] for r in rounds] == list("abca")  # and the first runner rotates
    assert [len(t) for t in times] == [4, 4, 4]


def test_bench_command_json_and_bad_files(models, tmp_path, capsys):
    assert main(["bench", str(models[0]), "--json", "--repeats", "3", "--warmup", "1", "--batch-sizes", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["models"][0]["latency"]["1"]["ratio"] == 1.0 and doc["threads"] >= 1
    add = tmp_path / "add.onnx"
    onnx.save(helper.make_model(helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])], "add",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3]) for n in "ab"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])]),
        opset_imports=[helper.make_opsetid("", 18)]), str(add))
    for argv, message in (([str(models[0]), str(add)], "not an image classifier"),
                          ([str(tmp_path / "none.onnx")], "not found"),
                          ([str(models[0]), "--repeats", "0"], "--repeats")):
        assert main(["bench", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("sdprune bench: error:") and message in err[0]
