"""The package's imports flow one way: choices < depth < nets, data < train < deploy < prune
< cli, and the modules of one layer import each other without a cycle.

Scans every import in the package (function-local and ``TYPE_CHECKING`` ones included,
relative ones resolved, ``from sdprune import cli`` read as the module it names), so a new
upward import or a new cycle fails here rather than surfacing later as a cycle dodged by
hand (an import moved into a function). A helper two modules of a layer share lives in the
lower of the two, or a layer below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sdprune"
# Lower number = lower layer. A module may import its own subpackage, and any layer below.
# choices (the options' values) sits on errors and under every layer that acts on a choice.
LAYERS = {"errors": 0, "report": 0, "faults": 0, "__init__": 0, "choices": 0.5, "files": 1, "depth": 1,
          "nets": 2, "data": 2, "train": 3, "deploy": 4, "prune": 5, "cli": 6, "__main__": 7}


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


def module_name(module: tuple[str, ...]) -> str:
    """("deploy", "export") -> "sdprune.deploy.export"; a package's __init__ is the package."""
    return ".".join(("sdprune", *(module[:-1] if module[-1] == "__init__" else module)))


def import_graph(sources: dict[tuple[str, ...], str]) -> dict[str, dict[str, int]]:
    """Module -> {module it imports: first line}, for the modules of ``sources`` (path inside the
    package -> text). "X.y" is module X.y when there is one, else module X (y is a name in X)."""
    names = {module_name(m) for m in sources}
    graph: dict[str, dict[str, int]] = {}
    for module, source in sources.items():
        own = module_name(module)
        edges = graph.setdefault(own, {})
        for line, name in imported_names(source, module):
            target = name if name in names else name.rpartition(".")[0]
            if target in names and target != own:
                edges.setdefault(target, line)
    return graph


def cycles_inside_layers(graph: dict[str, dict[str, int]]) -> list[str]:
    """One cycle per knot of same-layer modules that import each other, as
    "a -> b (line 3) -> a (line 7)" (Tarjan's strongly connected components)."""
    def layer(name: str) -> str:
        return _layer(name.split(".")[1:])

    same = {a: {b: line for b, line in out.items() if layer(b) == layer(a)} for a, out in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    knots: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(same.get(node, {})):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            knot = []
            while not knot or knot[-1] != node:
                knot.append(stack.pop())
            if len(knot) > 1:
                knots.append(knot)

    for node in sorted(same):
        if node not in index:
            visit(node)
    return [_a_cycle(same, sorted(knot)) for knot in knots]


def _a_cycle(same: dict[str, dict[str, int]], knot: list[str]) -> str:
    """A path from the knot's first module back to itself, through the knot only (breadth first: a shortest one)."""
    start, members = knot[0], set(knot)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(same[node]):
            if nxt == start:
                path = paths[node] + [start]
                return path[0] + "".join(f" -> {b} (line {same[a][b]})" for a, b in zip(path, path[1:]))
            if nxt in members and nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    raise AssertionError(f"no cycle through {start}")  # a strongly connected knot always has one


def test_no_import_cycle_inside_a_layer():
    sources = {p.relative_to(PACKAGE).with_suffix("").parts: p.read_text() for p in MODULES}
    cycles = cycles_inside_layers(import_graph(sources))
    assert not cycles, f"modules of one layer import each other in a cycle: {cycles}"


@pytest.mark.parametrize("sources,expected", [
    ({("deploy", "export"): "def f():\n    from sdprune.deploy.runtime import non_finite_rows",
      ("deploy", "runtime"): "from . import export",
      ("deploy", "quantize"): "from sdprune.deploy import export, runtime"},
     ["sdprune.deploy.export -> sdprune.deploy.runtime (line 2) -> sdprune.deploy.export (line 1)"]),
    ({("prune", "output"): "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .pipeline import Budget",
      ("prune", "pipeline"): "from sdprune.prune.heal import heal\nfrom sdprune.prune.output import folder_name",
      ("prune", "heal"): "import sdprune.prune"},
     ["sdprune.prune.output -> sdprune.prune.pipeline (line 3) -> sdprune.prune.output (line 2)"]),
    ({("train", "__init__"): "from sdprune.train.loop import train",
      ("train", "loop"): "from sdprune.train import checkpoint",
      ("train", "checkpoint"): "from sdprune.train import TrainConfig"},
     ["sdprune.train -> sdprune.train.loop (line 1) -> sdprune.train.checkpoint (line 1) -> sdprune.train (line 1)"]),
    ({("deploy", "export"): "from sdprune.deploy.runtime import open_session",
      ("deploy", "runtime"): "from sdprune.train.checkpoint import kept_blocks",
      ("train", "checkpoint"): "def f():\n    from sdprune.deploy import export"}, []),  # upward: the other test's
])
def test_the_cycle_check_sees_cycles_through_any_form_of_import(sources, expected):
    assert cycles_inside_layers(import_graph(sources)) == expected


def test_every_subpackage_has_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert folders | modules <= set(LAYERS), sorted((folders | modules) - set(LAYERS))
