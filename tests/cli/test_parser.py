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
