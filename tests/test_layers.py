"""The package's imports flow one way: depth < nets, data < train < deploy < prune < cli.

Scans every import in the package (function-local ones included, relative ones resolved,
``from sdprune import cli`` read as the module it names), so a new upward import fails
here rather than surfacing later as a cycle dodged by hand.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sdprune"
# Lower number = lower layer. A module may import its own subpackage, and any layer below.
LAYERS = {"errors": 0, "report": 0, "files": 1, "faults": 0, "__init__": 0, "__main__": 7, "depth": 1, "nets": 2, "data": 2,
          "train": 3, "deploy": 4, "prune": 5, "cli": 6}


def _layer(parts: list[str]) -> str:
    return parts[0] if parts else "__init__"


def imported_names(source: str, module: tuple[str, ...]) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every sdprune import in ``source``, the text of module
    ``module`` (its path inside the package, e.g. ("depth", "gates") or ("nets", "__init__")).

    ``from X import y`` gives "X.y": y may be a submodule (``from sdprune import cli``).
    """
    package = ("sdprune", *module[:-1])  # a module's package; __init__'s is its own folder
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else ()
            if node.level and len(base) < 1:
                raise AssertionError(f"line {node.lineno}: relative import above the package")
            parent = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found += [(node.lineno, parent if a.name == "*" else f"{parent}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "sdprune"]


def upward_imports(source: str, module: tuple[str, ...]) -> list[str]:
    own = _layer(list(module))
    upward = []
    for line, name in imported_names(source, module):
        target = name.split(".")[1:]
        if not target or target[0] == "__version__":
            continue
        other = _layer(target)
        if other != own and LAYERS[other] >= LAYERS[own]:
            upward.append(f"line {line}: {name}")
    return upward


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_only_flow_downwards(path):
    module = path.relative_to(PACKAGE).with_suffix("").parts
    upward = upward_imports(path.read_text(), module)
    assert not upward, f"{path.relative_to(PACKAGE)} imports from its own layer or above: {upward}"


@pytest.mark.parametrize("source,module,expected", [
    ("from sdprune import cli", ("depth", "gates"), ["line 1: sdprune.cli"]),
    ("from sdprune import __version__, errors", ("depth", "gates"), []),
    ("from ..train import loop", ("depth", "gates"), ["line 1: sdprune.train.loop"]),
    ("from . import block", ("depth", "gates"), []),
    ("from .. import prune", ("nets", "__init__"), ["line 1: sdprune.prune"]),
    ("from ..depth.block import GatedBlock", ("nets", "cifar_resnet"), []),
    ("def f():\n    import sdprune.deploy.export", ("train", "loop"), ["line 2: sdprune.deploy.export"]),
])
def test_the_scan_sees_every_form_of_import(source, module, expected):
    assert upward_imports(source, module) == expected


def test_every_subpackage_has_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert folders | modules <= set(LAYERS), sorted((folders | modules) - set(LAYERS))
