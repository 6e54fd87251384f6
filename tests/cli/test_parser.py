"""The command table: every subcommand is there, and a broken one fails loudly."""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import sys

import pytest

from sdprune.cli import COMMANDS, build_parser


class BrokenDependency(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes importing one module fail as if a package it imports were not installed."""

    def __init__(self, module: str, missing: str) -> None:
        self.module, self.missing = module, missing

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname == self.module else None

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        raise ModuleNotFoundError(f"No module named {self.missing!r}", name=self.missing)


def commands(parser: argparse.ArgumentParser) -> set[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_every_command_is_registered():
    assert commands(build_parser()) == set(COMMANDS)


def test_a_command_whose_import_fails_is_an_error_not_a_missing_command(monkeypatch):
    monkeypatch.delitem(sys.modules, "sdprune.cli.bench", raising=False)
    monkeypatch.setattr(sys, "meta_path", [BrokenDependency("sdprune.cli.bench", "onnxruntime"), *sys.meta_path])
    with pytest.raises(ModuleNotFoundError, match="onnxruntime"):
        build_parser()


def options(parser: argparse.ArgumentParser, command: str) -> dict[str, argparse.Action]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {o: a for a in sub.choices[command]._actions for o in a.option_strings}


def test_prune_and_sweep_take_the_same_pruning_options():
    """A sweep point is what `sdprune prune` makes: the options that shape a pruned network are the same."""
    parser = build_parser()
    prune, sweep = options(parser, "prune"), options(parser, "sweep")
    shared = ["--allow-empty-stage", "--heal", "--no-heal", "--finetune-epochs", "--no-distill", "--seed",
              "--device", "--batch-size", "--stats-images"]
    for flag in shared:
        assert flag in prune and flag in sweep, flag
        a, b = prune[flag], sweep[flag]
        assert (a.dest, a.default, a.choices, a.help, a.const) == (b.dest, b.default, b.choices, b.help, b.const), flag
    args = parser.parse_args(["sweep", "--no-distill", "--allow-empty-stage", "--batch-size", "32",
                              "--stats-images", "64", "--no-heal"])
    assert (args.distill, args.keep_stages, args.batch_size, args.stats_images, args.heal) == (
        False, False, 32, 64, "none")


def test_statistics_score_the_same_default_subset_in_stats_prune_and_sweep():
    """One cap (1,000 seeded validation images, measured to choose what all 5,000 choose) for every
    command that scores blocks, and the library's functions behind them; `all` lifts it."""
    import inspect

    from sdprune.prune.pipeline import prune_checkpoint
    from sdprune.choices import STATS_IMAGES
    from sdprune.prune.stats import score_checkpoint
    from sdprune.prune.sweep import sweep_checkpoint

    parser = build_parser()
    assert STATS_IMAGES == 1000
    for command in (["prune", "--keep", "0.5"], ["sweep"]):
        assert parser.parse_args(command).stats_images == STATS_IMAGES
        assert parser.parse_args(command + ["--stats-images", "all"]).stats_images is None
    assert parser.parse_args(["stats"]).images == STATS_IMAGES
    assert parser.parse_args(["stats", "--images", "ALL"]).images is None
    defaults = [inspect.signature(f).parameters[name].default for f, name in
                ((prune_checkpoint, "stats_images"), (sweep_checkpoint, "stats_images"), (score_checkpoint, "max_images"))]
    assert defaults == [STATS_IMAGES] * 3
    with pytest.raises(SystemExit):
        parser.parse_args(["prune", "--keep", "0.5", "--stats-images", "many"])


def test_comma_separated_integers_are_parsed_once():
    from sdprune.cli.common import ints
    from sdprune.deploy.latency import DEFAULT_BATCH_SIZES

    parser = build_parser()
    assert parser.parse_args(["bench", "m.onnx"]).batch_sizes == DEFAULT_BATCH_SIZES
    assert parser.parse_args(["bench", "m.onnx", "--batch-sizes", "1,8"]).batch_sizes == (1, 8)
    assert parser.parse_args(["train", "--lr-milestones", "3,6"]).lr_milestones == (3, 6)
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated integers"):
        ints("1,x")


def test_every_flag_says_what_it_does_and_its_real_default():
    """A flag that takes a value names its default (the value used when it is not given), never argparse's
    "(default: None)"; switches say what they turn on. Positionals that may be left out say what is used then."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    switches = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction)
    for name, command in sub.choices.items():
        text = command.format_help()
        assert "default: None" not in text and "(default: ())" not in text, name
        for action in command._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue  # help itself, and deprecated aliases kept out of the help
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and len(action.help) > 8, label
            required = not action.option_strings and action.nargs not in ("?", "*")
            if not isinstance(action, switches) and not required:
                assert "default" in action.help, label


def test_the_defaults_shown_are_the_ones_used():
    from sdprune.train.config import TrainConfig

    parser = build_parser()
    train = options(parser, "train")
    defaults = TrainConfig()
    for flag, field in [("--epochs", "epochs"), ("--batch-size", "batch_size"), ("--lr", "lr"), ("--seed", "seed"),
                        ("--momentum", "momentum"), ("--weight-decay", "weight_decay"), ("--model", "model"),
                        ("--survival", "survival"), ("--p-last", "p_last"), ("--workers", "workers")]:
        value = getattr(defaults, field)
        shown = f"default {value:g}" if isinstance(value, float) else f"default {value}"
        assert shown in train[flag].help, (flag, train[flag].help)
    assert "default 128" in options(parser, "stats")["--batch-size"].help


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["prune", "--keep", "half"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sdprune prune: error: argument --keep: invalid float value")


def test_the_command_line_parses_without_loading_torch():
    """`sdprune --help` and a mistyped flag answer at once: building the parser loads no
    torch, torchvision or onnx (sdprune.choices holds what the options need)."""
    import subprocess

    probe = ("import sys\nfrom sdprune.cli import main\n"
             "for argv in (['--help'], ['prune', '--help'], ['train', '--epochs', 'x'], ['sweep', '--keep', 'y']):\n"
             "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code in (0, 2), e.code\n"
             "print(sorted(m for m in ('torch', 'torchvision', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert "invalid int value: 'x'" in done.stderr  # the usage errors were really reached


def test_sdprune_train_exports_its_public_names_on_first_use():
    """``sdprune.train`` imports its public names lazily (the parser reads its config without
    torch); ``__all__`` is a literal for linters, and must name exactly those."""
    import sdprune.train as train

    assert sorted(train.__all__) == sorted(train._PUBLIC)
    for name in train.__all__:
        assert getattr(train, name).__name__ == name and name in dir(train)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        train.nope  # noqa: B018
