"""`sdprune export`: verified ONNX of full and pruned checkpoints, export.json, bad input."""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from sdprune.cli import main
from sdprune.data.bundle import load_data
from sdprune.deploy.gate import DEFAULT_MAX_DROP, DEFAULT_MIN_CLEAR_AGREEMENT
from sdprune.deploy.package import default_out_dir
from sdprune.depth.schedule import get_survival
from sdprune.depth.structure import remove_blocks
from sdprune.train.checkpoint import build_model, load_checkpoint, save_checkpoint
from sdprune.train.config import TrainConfig
from sdprune.train.loop import train

REMOVED = ["stages.0.1", "stages.1.2", "stages.2.1", "stages.2.2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A trained resnet20 run on digits and a pruned checkpoint of it in a ``pruned-*`` folder of the run
    (the prefix `sdprune prune` names its folders with, which export looks for)."""
    root = tmp_path_factory.mktemp("export-runs")
    train(TrainConfig(model="resnet20", epochs=1, out=str(root / "r20")))
    ckpt = load_checkpoint(root / "r20" / "checkpoint.pt")
    model = remove_blocks(build_model(ckpt), REMOVED)
    meta = {**ckpt["meta"], "kind": "pruned", "removed": REMOVED, "survival": get_survival(model)}
    save_checkpoint(root / "r20" / "pruned-keep0.50" / "checkpoint.pt", model, meta)
    return root


def call(capsys, *argv: str) -> tuple[int, dict | None, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if "--json" in argv and rc == 0 else None), err


def test_export_takes_the_newest_pruned_model_and_verifies_it(runs, capsys, monkeypatch):
    monkeypatch.setenv("SDPRUNE_RUNS", str(runs))
    rc, record, err = call(capsys, "export", "--json", "--int8", "--calib-batches", "2", "--ort", "--samples", "96")
    assert rc == 0, err  # and stdout held exactly one JSON object: the exporter's chatter was kept off it
    out = runs / "r20" / "pruned-keep0.50" / "export"
    assert record["checkpoint"] == str(out.parent / "checkpoint.pt") and record["kind"] == "pruned"
    assert record["opset"] == 18 and record["exporter"] == "dynamo"
    assert set(record["versions"]) == {"torch", "onnx", "onnxruntime"}
    # parity on real test images at two batch sizes, within the default tolerance
    rows = {r["batch"]: r for r in record["parity"]["batches"]}
    assert set(rows) == {1, 64} and all(r["images"] == 96 for r in rows.values())
    assert all(r["max_abs_diff"] <= 1e-4 and r["top1_agreement"] >= 99.0 for r in rows.values())
    assert record["parity"]["dataset"] == "digits" and record["parity"]["split"] == "test"
    assert record["parity"]["sample"]["images"] == 96 and record["parity"]["sample"]["classes"] == 10
    # every file is there, with the size and hash export.json gives
    names = {f["name"] for f in record["files"]}
    assert names == {"model.onnx", "model.int8.onnx", "model.ort", "model.int8.ort", "required_operators.config"}
    for f in record["files"]:
        data = (out / f["name"]).read_bytes()
        assert len(data) == f["bytes"] and hashlib.sha256(data).hexdigest() == f["sha256"]
    assert json.loads((out / "export.json").read_text()) == record
    assert sorted(p.name for p in out.iterdir()) == sorted(names | {"export.json"})  # no staging left
    # the blocks and the preprocessing a device needs
    assert record["blocks"]["removed"] == REMOVED and len(record["blocks"]["kept"]) == 5
    assert record["preprocessing"]["input_shape"] == [1, 8, 8] and len(record["preprocessing"]["mean"]) == 1
    assert record["int8"]["calibration"]["batches"] == 2 and record["int8"]["size_ratio"] < 0.5
    assert record["int8"]["calibration"]["method"] == "MinMax" and record["int8"]["float_ends"]
    assert len(record["int8"]["float_nodes"]) == 2  # the stem and the classifier
    # int8 passed its default gate (a 1-epoch network, pruned: the least trained the suite makes), and
    # export.json says against what, with the figures it judged
    assert record["int8"]["gate"] == {"min_clear_agreement": DEFAULT_MIN_CLEAR_AGREEMENT, "max_drop": DEFAULT_MAX_DROP,
                                      "passed": True, "reasons": []}
    assert record["int8"]["clear_agreement"] >= DEFAULT_MIN_CLEAR_AGREEMENT
    assert record["int8"]["acc_change_ci"][1] >= -DEFAULT_MAX_DROP
    assert {"fp32_acc", "int8_acc", "n", "clear_images", "near_ties", "fp32_only", "int8_only",
            "mcnemar_p"} <= set(record["int8"])
    # each .ort file was checked against the ONNX file it came from, on real test images
    checks = {Path(c["file"]).name: c for c in record["ort"]["checks"]}
    assert {n: Path(c["reference"]).name for n, c in checks.items()} == {
        "model.ort": "model.onnx", "model.int8.ort": "model.int8.onnx"}
    for c in checks.values():
        assert Path(c["reference"]).parent == out and c["images"] == 96 and c["flips"] == 0
        assert 0 <= c["max_abs_diff"] <= c["atol"] or not c["bound"]
    # fp32: every logit within the export's atol; int8 made for arm, checked here: its decisions only
    assert checks["model.ort"]["bound"] and checks["model.ort"]["top1_agreement"] == 100.0
    assert checks["model.int8.ort"]["bound"] == (platform.machine().lower() in ("arm64", "aarch64"))
    assert checks["model.ort"]["atol"] == 1e-4 < checks["model.int8.ort"]["atol"]
    assert record["target"] == "arm" and record["ort"]["target_platform"] == "arm"
    assert record["int8"]["activation_type"] == "QInt8" and not record["int8"]["reduce_range"]


def test_checkpoints_of_one_folder_export_to_folders_of_their_own():
    assert default_out_dir("runs/r/checkpoint.pt") == Path("runs/r/export")
    assert default_out_dir("runs/r/best.pt") == Path("runs/r/export-best")


def test_full_export_graph_metadata_size_and_stale_files(runs, capsys):
    out = runs / "r20" / "export"
    out.mkdir(exist_ok=True)
    # a previous export that also made an int8 file: this one does not, so it must not linger
    (out / "model.int8.onnx").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    (out / "export.json").write_text(json.dumps({"files": [{"name": "model.int8.onnx"}]}))
    killed = out / ".export.999999999-ab12.tmp"  # the staging folder of an export killed mid-way (pid > pid_max)
    killed.mkdir()
    (killed / "model.onnx").write_bytes(b"half")
    rc, record, err = call(capsys, "export", str(runs / "r20"), "--json", "--samples", "16")
    assert rc == 0, err
    assert record["kind"] == "train" and record["blocks"]["removed"] == []
    assert not (out / "model.int8.onnx").exists() and (out / "notes.txt").read_text() == "mine"
    assert not killed.exists()
    proto = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert not {n.op_type for n in proto.graph.node} & {"Dropout", "Bernoulli", "RandomUniform", "RandomUniformLike"}
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert not list(out.glob("*.data"))  # one self-contained file
    props = {p.key: p.value for p in proto.metadata_props}
    meta = load_checkpoint(runs / "r20" / "checkpoint.pt")["meta"]
    assert json.loads(props["classes"]) == meta["data"]["classes"]
    assert json.loads(props["mean"]) == meta["data"]["mean"] and json.loads(props["std"]) == meta["data"]["std"]
    assert json.loads(props["kept_blocks"]) == meta["blocks"] and props["sdprune_version"]
    # the pruned model's file is smaller (4 of 9 blocks, most of them wide, are gone)
    pruned = runs / "r20" / "pruned-keep0.50" / "export" / "model.onnx"
    if not pruned.exists():  # this test may run alone
        assert main(["export", str(pruned.parent.parent), "-q", "--samples", "16"]) == 0
    assert pruned.stat().st_size < 0.75 * (out / "model.onnx").stat().st_size


def test_parity_failure_leaves_no_model(runs, tmp_path, capsys):
    out = tmp_path / "strict"
    rc, _, err = call(capsys, "export", str(runs / "r20" / "pruned-keep0.50"), "--atol", "0", "--samples", "8", "-q",
                      "--out", str(out))
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "parity check failed: max |logit diff|" in lines[0] and "> --atol 0" in lines[0]
    assert not out.exists()  # no model, no staging folder, not even the folder it created


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))


def _tiny_meta(data) -> dict:
    return {"model": {"name": "tiny"}, "data": data.meta(), "blocks": [], "removed": []}


def test_torchscript_exporter_is_the_fallback(monkeypatch, tmp_path):
    from sdprune.deploy.export import export_onnx

    data = load_data("digits")
    model, meta = _tiny(), _tiny_meta(data)
    real_export = torch.onnx.export

    def dynamo_breaks(*args, **kwargs):
        if kwargs.get("dynamo"):
            raise RuntimeError("unsupported op")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_breaks)
    record = export_onnx(model, meta, tmp_path, data=data, samples=8)
    assert record["exporter"] == "torchscript" and record["parity"]["ok"]
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_a_broken_int8_model_publishes_nothing(runs, tmp_path, capsys, monkeypatch):
    from sdprune.deploy import quantize

    out = tmp_path / "gated"
    assert main(["export", str(runs / "r20" / "pruned-keep0.50"), "-q", "--samples", "8", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = quantize.calibration_batches  # calibrated on constant images: every activation range wrong
    monkeypatch.setattr(quantize, "calibration_batches", lambda *a, **k: [b * 0 for b in real(*a, **k)])
    rc, _, err = call(capsys, "export", str(runs / "r20" / "pruned-keep0.50"), "-q", "--samples", "8", "--out",
                      str(out), "--int8", "--calib-batches", "1", "--ort")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "int8 check failed on 359 test images: top-1 agreement" in lines[0], err
    assert f"% < {DEFAULT_MIN_CLEAR_AGREEMENT:g}% on the " in lines[0] and "no int8 model written" in lines[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous export, untouched


def test_the_gates_flags_and_the_old_one(capsys, monkeypatch):
    from sdprune.deploy import package

    seen = {}
    monkeypatch.setattr(package, "export_checkpoint", lambda *a, **k: seen.update(k) or {})
    monkeypatch.setattr("sdprune.train.runs.resolve_checkpoint", lambda *a, **k: "ckpt.pt")
    assert main(["export", "ckpt.pt", "--int8", "-q"]) == 0
    assert seen["int8_min_clear_agreement"] is None  # the library's default
    assert seen["int8_max_drop"] == DEFAULT_MAX_DROP
    assert main(["export", "ckpt.pt", "--int8", "-q", "--int8-min-clear-agreement", "98", "--int8-max-drop", "2"]) == 0
    assert seen["int8_min_clear_agreement"] == 98.0 and seen["int8_max_drop"] == 2.0
    assert seen["calib_method"] == "minmax" and seen["int8_float_ends"] is None  # None: the target's choice
    assert main(["export", "ckpt.pt", "--int8", "-q", "--calib-method", "percentile", "--no-int8-float-ends"]) == 0
    assert seen["calib_method"] == "percentile" and seen["int8_float_ends"] is False
    capsys.readouterr()
    # the flag before issue 21 still works, now setting the agreement on clearly decided images, with a warning
    assert main(["export", "ckpt.pt", "--int8", "-q", "--int8-min-agreement", "0"]) == 0
    assert seen["int8_min_clear_agreement"] == 0.0 and seen["int8_max_drop"] == DEFAULT_MAX_DROP
    assert "--int8-min-agreement is deprecated" in capsys.readouterr().err
    assert "--int8-min-agreement" not in _export_help()  # hidden: one name per setting in --help


def _export_help() -> str:
    from sdprune.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["export"].format_help()


def test_parity_sample_is_a_seeded_draw_across_classes(sorted_bundle, label_of, tmp_path, monkeypatch):
    from sdprune.deploy import export

    seen = []
    real = export.verify_parity

    def spy(model, session, images, *args):
        seen.append(images.clone())
        return real(model, session, images, *args)

    monkeypatch.setattr(export, "verify_parity", spy)
    data = sorted_bundle
    first = export.export_onnx(_tiny(), _tiny_meta(data), tmp_path / "a", data=data, samples=20)
    export.export_onnx(_tiny(), _tiny_meta(data), tmp_path / "b", data=data, samples=20)
    classes = set(label_of(seen[0]))
    assert len(seen[0]) == 20 and len(classes) >= 6  # the split's first 20 images are classes 0 and 1 only
    assert torch.equal(seen[0], seen[1])  # a fixed seed: the same export checks the same images
    test_rows = {tuple(x.flatten().tolist()) for x in data.test.images}
    assert all(tuple(x.flatten().tolist()) in test_rows for x in seen[0])  # test images, no repeats
    assert len({tuple(x.flatten().tolist()) for x in seen[0]}) == 20
    assert first["parity"]["sample"] == {"split": "test", "images": 20, "of": 100, "draw": "seeded random subset",
                                         "seed": export.SAMPLE_SEED, "classes": len(classes)}


def test_non_finite_logits_fail_parity(sorted_bundle, tmp_path):
    from types import SimpleNamespace

    import numpy as np

    from sdprune.deploy.export import export_onnx, verify_parity
    from sdprune.errors import SdpruneError

    data = sorted_bundle
    broken = _tiny()
    with torch.no_grad():
        broken[-1].bias[3] = float("nan")  # PyTorch and ONNX Runtime both give NaN logits: 0 difference
    with pytest.raises(SdpruneError, match="non-finite logits from PyTorch on 8 of 8 test images"):
        export_onnx(broken, _tiny_meta(data), tmp_path / "out", data=data, samples=8)
    assert list((tmp_path / "out").iterdir()) == []  # no model, no staging folder

    class NanSession:  # ONNX Runtime's side going wrong while PyTorch is fine
        def get_inputs(self):
            return [SimpleNamespace(name="input")]

        def run(self, _, feeds):
            out = np.zeros((len(feeds["input"]), 10), np.float32)
            out[0, 0] = np.inf
            return [out]

    parity = verify_parity(_tiny().eval(), NanSession(), data.test.images[:8], data, (1, 4), 1e9)
    assert not parity["ok"]
    assert [r["non_finite"] for r in parity["batches"]] == [{"pytorch": 0, "onnxruntime": 8},
                                                            {"pytorch": 0, "onnxruntime": 2}]


def test_export_leaves_the_callers_model_alone(sorted_bundle, tmp_path):
    from sdprune.deploy.export import export_onnx

    data = sorted_bundle
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 10)).double().train()
    before = {k: (v, v.clone()) for k, v in model.state_dict(keep_vars=True).items()}
    record = export_onnx(model, _tiny_meta(data), tmp_path, data=data, samples=8)
    assert record["parity"]["ok"]
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict(keep_vars=True)
    assert after.keys() == before.keys()
    for k, (tensor, values) in before.items():
        assert after[k] is tensor and tensor.dtype == values.dtype and torch.equal(tensor, values), k
    assert next(model.parameters()).dtype == torch.float64


@pytest.mark.parametrize("case", ["missing", "foreign", "opset", "atol", "agreement", "drop", "unwritable"])
def test_bad_input_exits_2_with_one_line(runs, tmp_path, capsys, case):
    ckpt = str(runs / "r20" / "checkpoint.pt")
    out = tmp_path / "out"
    argv = {"missing": ["export", str(tmp_path / "nope.pt"), "--out", str(out)],
            "foreign": ["export", str(tmp_path / "foreign.pt"), "--out", str(out)],
            "opset": ["export", ckpt, "--opset", "13", "--out", str(out)],
            "atol": ["export", ckpt, "--atol", "-1", "--out", str(out)],
            "agreement": ["export", ckpt, "--int8", "--int8-min-clear-agreement", "101", "--out", str(out)],
            "drop": ["export", ckpt, "--int8", "--int8-max-drop", "-1", "--out", str(out)],
            "unwritable": ["export", ckpt, "--out", str(tmp_path / "a-file" / "out")]}[case]
    (tmp_path / "foreign.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "a-file").write_text("x")
    rc, _, err = call(capsys, *argv)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sdprune export: error:")
    assert {"missing": "not found", "foreign": "not a readable sdprune checkpoint",
            "opset": "--opset 13", "atol": "--atol must be >= 0",
            "agreement": "--int8-min-clear-agreement must be between 0 and 100, got 101",
            "drop": "--int8-max-drop must be between 0 and 100 points, got -1",
            "unwritable": "cannot write to output folder"}[case] in lines[0]
    assert not out.exists()


def test_parity_bound_grows_with_the_logits():
    """fp32 rounding grows with the values: the bound is atol x max(1, largest |logit|), so the same
    absolute difference passes on logits near 50 and fails on logits near 1; atol 0 still fails."""
    from types import SimpleNamespace

    from sdprune.deploy.export import verify_parity

    class Session:  # ONNX Runtime's interface, returning PyTorch's logits plus a fixed error
        def __init__(self, model, error):
            self.model, self.error = model, error

        def get_inputs(self):
            return [SimpleNamespace(name="input")]

        def run(self, _, feeds):
            with torch.no_grad():
                return [(self.model(torch.from_numpy(feeds["input"])) + self.error).numpy()]

    data = SimpleNamespace(mean=(0.0,), std=(1.0,), name="synthetic")
    images = torch.full((4, 1, 2, 2), 128, dtype=torch.uint8)
    for scale, atol, ok in ((50.0, 1e-4, True), (1.0, 1e-4, False), (50.0, 0.0, False)):
        model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        with torch.no_grad():
            model[1].weight.fill_(scale / 4 / images.float().div(255).max().item())
            model[1].bias.zero_()
        parity = verify_parity(model.eval(), Session(model, 1e-3), images, data, (1, 4), atol)
        assert parity["ok"] is ok, (scale, atol, parity)
        assert all(abs(r["max_abs_logit"] - scale) < 1e-3 for r in parity["batches"])
