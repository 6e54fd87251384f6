"""Fuzz corpus, checkpoints: every metadata field dropped, retyped and out of range, tensors reshaped,
non-finite weights, broken optimizer state. Each case is refused by the commands that read it with
exit 2, one line on stderr, no traceback and nothing written (the ``refused`` fixture)."""

from __future__ import annotations

import math

import pytest
import torch

# What each command runs on the checkpoint (its default outputs go next to it, inside the checked folder).
COMMANDS = {
    "eval": ["eval", "{ckpt}", "--device", "cpu"],
    "stats": ["stats", "{ckpt}", "--device", "cpu"],
    "prune": ["prune", "{ckpt}", "--keep", "0.5", "--device", "cpu"],
    "export": ["export", "{ckpt}"],
    "sweep": ["sweep", "{ckpt}", "--keep", "0.5", "--criteria", "depth", "--no-onnx", "--device", "cpu"],
    "resume": ["train", "--resume", "{ckpt}", "--device", "cpu"],
}
ORDER = list(COMMANDS)


def put(path: str, value):
    """A change setting ``meta.model.num_classes``-style ``path`` of the payload to ``value``."""
    def change(payload):
        *parents, last = path.split(".")
        target = payload
        for key in parents:
            target = target[key]
        target[last] = value
    return change


def drop(path: str):
    def change(payload):
        *parents, last = path.split(".")
        target = payload
        for key in parents:
            target = target[key]
        del target[last]
    return change


def tensor(key: str, make):
    """Replace state_dict[key] by ``make(old)``."""
    def change(payload):
        payload["state_dict"][key] = make(payload["state_dict"][key])
    return change


def drop_tensor(key: str):
    def change(payload):
        del payload["state_dict"][key]
    return change


def first_momentum(make):
    def change(payload):
        state = payload["optimizer"]["state"]
        first = min(state)
        state[first]["momentum_buffer"] = make(state[first]["momentum_buffer"])
    return change


REQUIRED = ["format", "schema", "meta", "state_dict", "meta.model", "meta.model.name", "meta.model.num_classes",
            "meta.model.in_channels", "meta.data", "meta.data.dataset", "meta.data.classes", "meta.data.input_shape",
            "meta.data.mean", "meta.data.std", "meta.blocks"]
RETYPED = ["text", 2.5, None, [], True]
HEAD = "head.2.weight"
CASES: list[tuple[str, object]] = []
CASES += [(f"drop {p}", drop(p)) for p in REQUIRED]
CASES += [(f"retype {p} to {v!r}", put(p, v)) for p in REQUIRED for v in RETYPED]
CASES += [(f"{p} = {v!r}", put(p, v)) for p, v in [
    ("format", "something-else"), ("schema", 0), ("schema", 99), ("schema", "1"),
    ("meta.model.name", "resnet21"), ("meta.model.name", "tv_resnet18"),
    ("meta.model.num_classes", 0), ("meta.model.num_classes", -3), ("meta.model.num_classes", 11),
    ("meta.model.num_classes", 10**9), ("meta.model.num_classes", "10"),
    ("meta.model.in_channels", 0), ("meta.model.in_channels", 3), ("meta.model.in_channels", 1.0),
    ("meta.model.kwargs", "x"), ("meta.model.kwargs", {"bogus": 1}), ("meta.model.kwargs", {"widths": "abc"}),
    ("meta.model.kwargs", {"shortcut": "conv"}), ("meta.model.kwargs", {"widths": [10**6, 10**6, 10**6]}),
    ("meta.data.dataset", 5), ("meta.data.classes", [str(i) for i in range(9)]), ("meta.data.classes", list(range(10))),
    ("meta.data.classes", ["a"] * 10), ("meta.data.classes", [*"abcdefghi", "a"]),
    ("meta.data.input_shape", [1, 8]), ("meta.data.input_shape", [0, 8, 8]), ("meta.data.input_shape", [3, 8, 8]),
    ("meta.data.input_shape", [1, 8, 10**6]), ("meta.data.input_shape", ["1", 8, 8]),
    ("meta.data.mean", [0.1, 0.2, 0.3]), ("meta.data.mean", [math.nan]), ("meta.data.mean", ["0.1"]),
    ("meta.data.mean", [math.inf]), ("meta.data.std", [0.0]), ("meta.data.std", [-0.5]), ("meta.data.std", []),
    ("meta.blocks", ["stages.0.0"]), ("meta.blocks", ["nowhere"] * 9), ("meta.blocks", [1] * 9),
    ("meta.removed", ["nowhere"]), ("meta.removed", ["stages.0.0", "stages.0.0"]), ("meta.removed", "stages.0.0"),
    ("meta.removed", ["stages.0.1"]),  # names a block whose weights are still there
    ("meta.kept", ["stages.0.0"]), ("meta.survival", [5.0] * 9), ("meta.survival", [math.nan] * 9),
    ("meta.survival", [0.5] * 8), ("meta.survival", "high"), ("meta.survival", [-0.1] * 9),
    ("meta.kind", 5), ("meta.epoch", -1), ("meta.epoch", "1"), ("meta.epoch", 1.5), ("meta.step", -12),
    ("meta.config", "epochs=2"), ("meta.config", {"epochs": "2"}), ("meta.config", {"bogus": 1}),
    ("meta.config", {"lr": -1.0}), ("meta.config", {"momentum": "0.9"}), ("meta.config", {"lr_milestones": ["a"]}),
    ("meta.config", {"seed": 2**80}), ("meta.config", {"warmup_epochs": math.nan}),
]]
CASES += [
    ("meta missing everything", put("meta", {})),
    ("payload is a list", lambda p: [p]),
    ("state_dict holds a string", tensor("stem.0.weight", lambda t: "weights")),
    ("head reshaped", tensor(HEAD, lambda t: t.reshape(-1))),
    ("head of 11 classes", tensor(HEAD, lambda t: torch.zeros(11, t.shape[1]))),
    ("stem of 3 channels", tensor("stem.0.weight", lambda t: t.repeat(1, 3, 1, 1))),
    ("conv weight transposed", tensor("stages.1.0.branch.0.weight", lambda t: t.transpose(0, 1))),
    ("weight as integers", tensor(HEAD, lambda t: t.long())),
    ("a tensor missing", drop_tensor(HEAD)),
    ("a tensor too many", put("state_dict.extra", torch.zeros(3))),
    ("survival tensor 5.0", tensor("stages.0.0.survival", lambda t: torch.tensor(5.0))),
    ("survival tensor NaN", tensor("stages.0.0.survival", lambda t: torch.tensor(math.nan))),
    ("survival tensor negative", tensor("stages.2.2.survival", lambda t: torch.tensor(-1.0))),
    ("survival tensor of 2 values", tensor("stages.0.0.survival", lambda t: torch.ones(2))),
]
NON_FINITE = [
    ("NaN weights", tensor(HEAD, lambda t: torch.full_like(t, math.nan))),
    ("one infinite weight", tensor("stem.0.weight", lambda t: t.index_fill(0, torch.tensor([0]), math.inf))),
    ("NaN BN statistics", tensor("stem.1.running_var", lambda t: torch.full_like(t, math.nan))),
]
RESUME_ONLY = [
    ("no optimizer", drop("optimizer")),
    ("optimizer as text", put("optimizer", "sgd")),
    ("optimizer without groups", put("optimizer", {"state": {}, "param_groups": []})),
    ("momentum of the wrong shape", first_momentum(lambda t: torch.zeros(3, 3))),
    ("momentum NaN", first_momentum(lambda t: torch.full_like(t, math.nan))),
    ("pruned checkpoint", put("meta.kind", "pruned")),
    ("drop meta.config", drop("meta.config")),
    ("drop meta.epoch", drop("meta.epoch")),
]


EVERY_COMMAND = {"drop meta", "retype meta.model.num_classes to 'text'", "meta.data.std = [0.0]", "head of 11 classes",
                 "survival tensor 5.0", "meta.config = {'epochs': '2'}"}


def ids(cases):
    return [name for name, _ in cases]


@pytest.mark.parametrize("index,case", list(enumerate(CASES)), ids=ids(CASES))
def test_malformed_checkpoint_is_refused(index, case, damaged, refused):
    """Each malformed checkpoint, through one command (in turn: every command meets every kind of damage)."""
    _, change = case
    command = ORDER[index % len(ORDER)]
    ckpt = damaged(change)
    refused([a.format(ckpt=ckpt) for a in COMMANDS[command]])


@pytest.mark.parametrize("command", ORDER)
@pytest.mark.parametrize("case", [c for c in CASES if c[0] in EVERY_COMMAND], ids=lambda c: c[0])
def test_every_command_refuses_a_malformed_checkpoint(command, case, damaged, refused):
    ckpt = damaged(case[1])
    refused([a.format(ckpt=ckpt) for a in COMMANDS[command]])


@pytest.mark.parametrize("command", ["export", "resume"])
@pytest.mark.parametrize("case", NON_FINITE, ids=ids(NON_FINITE))
def test_non_finite_weights_are_refused_where_they_would_make_garbage(command, case, damaged, refused):
    ckpt = damaged(case[1])
    line = refused([a.format(ckpt=ckpt) for a in COMMANDS[command]])
    assert "NaN or infinite" in line


@pytest.mark.parametrize("case", RESUME_ONLY, ids=ids(RESUME_ONLY))
def test_a_checkpoint_that_cannot_be_resumed_is_refused(case, damaged, refused):
    ckpt = damaged(case[1])
    refused([a.format(ckpt=ckpt) for a in COMMANDS["resume"]])


@pytest.mark.parametrize("content", [b"", b"\x00garbage\xff" * 50, b"PK\x03\x04truncated zip"],
                         ids=["empty", "garbage", "truncated zip"])
def test_unreadable_files_are_refused(content, refused, tmp_path):
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(content)
    for command in ORDER:
        refused([a.format(ckpt=ckpt) for a in COMMANDS[command]])


def test_a_truncated_checkpoint_is_refused(damaged, refused):
    ckpt = damaged(lambda payload: None)
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    refused(["eval", ckpt])


def test_the_valid_checkpoint_is_accepted(damaged):
    """The corpus mutates a checkpoint every command accepts: refusals come from the damage alone."""
    from sdprune.train.checkpoint import build_model, load_checkpoint

    path = damaged(lambda payload: None)
    model = build_model(load_checkpoint(path, finite=True))
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_non_finite_weights_elsewhere_are_reported_and_the_json_stays_strict(damaged, tmp_path, monkeypatch, capsys):
    """eval (like stats, prune, sweep without ONNX) runs, says the figures are meaningless, and prints null."""
    import json

    from sdprune.cli import main

    def refuse(name):
        raise ValueError(name)

    ckpt = damaged(tensor(HEAD, lambda t: torch.full_like(t, math.nan)))
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["eval", str(ckpt), "--json", "--quiet", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("warning: ") and "NaN or infinite values in head.2.weight" in err
    result = json.loads(out, parse_constant=refuse)  # strict: a bare NaN would be refused
    assert result["test"]["loss"] is None and result["val"]["loss"] is None


@pytest.mark.parametrize("command", ["eval", "init", "resume"])
def test_a_refused_pickle_prints_no_warning_before_its_line(command, refused, tmp_path):
    """torch warns ("Detected pickle protocol 4") before refusing a plain pickle: silenced, the line stands alone."""
    import pickle
    import warnings

    path = tmp_path / "run" / "checkpoint.pt"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps({"state_dict": {"w": [1.0]}}, protocol=4))
    argv = {"eval": ["eval", path, "--device", "cpu"], "resume": ["train", "--resume", path, "--device", "cpu"],
            "init": ["train", "--init", path, "--device", "cpu", "--out", tmp_path / "out"]}[command]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        refused(argv)
    assert [str(w.message) for w in caught] == []


@pytest.fixture(scope="module")
def torchvision_weights() -> dict:
    """A torchvision ResNet-18 state dict for digits' 10 classes (what `train --init` adopts)."""
    from torchvision.models import resnet18

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return resnet18(num_classes=10).state_dict()


def _retyped(dtype):
    return lambda state: {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


INIT_WEIGHTS = [
    ("integer weights", _retyped(torch.int64), "conv1.weight holds int64 values"),  # cast: every weight became 0
    ("bool weights", _retyped(torch.bool), "conv1.weight holds bool values"),  # "diverged at step 0"
    ("one integer tensor", lambda s: {**s, "fc.bias": s["fc.bias"].int()}, "fc.bias holds int32 values"),
    ("head bias of shape [0]", lambda s: {**s, "fc.bias": torch.zeros(0)}, "fc.bias 0 values"),
]


@pytest.mark.parametrize("case", INIT_WEIGHTS, ids=[c[0] for c in INIT_WEIGHTS])
def test_torchvision_weights_init_cannot_use_are_refused(case, torchvision_weights, refused, tmp_path):
    _, change, message = case
    path = tmp_path / "weights.pth"
    torch.save(change(dict(torchvision_weights)), path)
    line = refused(["train", "--init", path, "--epochs", "1", "--out", tmp_path / "out", "--device", "cpu"])
    assert message in line


def test_integer_batch_counters_are_adopted(torchvision_weights):
    """BatchNorm's num_batches_tracked is an integer in every torchvision file: not refused."""
    from sdprune.train.adopt import check_weight_types

    assert torchvision_weights["bn1.num_batches_tracked"].dtype == torch.int64
    check_weight_types("weights.pth", torchvision_weights)
