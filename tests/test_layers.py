"""The package's imports flow one way: depth < nets, data < train < deploy < prune < cli.

Scans every import in the package (function-local ones included), so a new upward import
fails here rather than surfacing later as a cycle dodged by hand.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sdprune"
# Lower number = lower layer. A module may import its own subpackage, and any layer below.
LAYERS = {"errors": 0, "report": 0, "__init__": 0, "__main__": 7, "depth": 1, "nets": 2, "data": 2,
          "train": 3, "deploy": 4, "prune": 5, "cli": 6}


def _layer(parts: list[str]) -> str:
    return parts[0] if parts else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sdprune":
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "sdprune"]
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_only_flow_downwards(path):
    rel = path.relative_to(PACKAGE).with_suffix("").parts
    own = _layer(list(rel))
    upward = []
    for line, module in _imports(path):
        target = module.split(".")[1:]
        if not target or target[0] == "__version__":
            continue
        other = _layer(target)
        if other == own:
            continue
        if LAYERS[other] >= LAYERS[own]:
            upward.append(f"line {line}: {module}")
    assert not upward, f"{path.relative_to(PACKAGE)} imports from its own layer or above: {upward}"


def test_every_subpackage_has_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert folders | modules <= set(LAYERS), sorted((folders | modules) - set(LAYERS))
