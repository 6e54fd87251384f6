"""Packaging: every third-party module the library and the test suite import is declared in
pyproject.toml (the library's own imports as dependencies, or an extra where imported lazily)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport, a dependency there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
# Import name -> distribution name, where they differ.
DISTRIBUTION = {"sklearn": "scikit-learn", "PIL": "pillow"}
# Distributions a declared dependency always brings along: torchvision requires pillow.
BROUGHT_BY = {"pillow": "torchvision"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    return canonical(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec).group(1))


def imported_modules(paths, top_level_only: bool = False) -> dict[str, str]:
    """Top-level names of every absolute import in ``paths`` -> first file.

    Imports inside functions count too, unless ``top_level_only`` (what importing the
    module itself needs).
    """
    found: dict[str, str] = {}
    for path in paths:
        tree = ast.parse(path.read_text(), str(path))
        nodes = _outside_functions(tree) if top_level_only else ast.walk(tree)
        for node in nodes:
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            where = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
            for name in names:
                found.setdefault(name.split(".")[0], where)
    return found


def _outside_functions(node: ast.AST):
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield child
            yield from _outside_functions(child)


def undeclared(imported: dict[str, str], declared: set[str]) -> dict[str, str]:
    """The third-party modules of ``imported`` whose distribution ``declared`` lacks."""
    # the benchmark scripts in tools/ are imported by their own tests, by file name
    local = {"sdprune", "conftest", "tests"} | {p.stem for p in (ROOT / "tools").glob("*.py")}
    missing = {}
    for module, where in imported.items():
        if module in sys.stdlib_module_names or module in local or module == "__future__":
            continue
        dist = canonical(DISTRIBUTION.get(module, module))
        if dist not in declared and BROUGHT_BY.get(dist) not in declared:
            missing[module] = where
    return missing


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_modules_the_tests_import_are_declared_dependencies():
    declared = {requirement_name(s) for s in project()["dependencies"] + project()["optional-dependencies"]["test"]}
    missing = undeclared(imported_modules(sorted((ROOT / "tests").rglob("*.py"))), declared)
    assert not missing, f"imported by the tests but not declared in pyproject.toml: {missing}"


def test_modules_the_library_imports_are_declared():
    """Importing sdprune needs only its dependencies; a lazy import may come from an extra (plot)."""
    runtime = {requirement_name(s) for s in project()["dependencies"]}
    extras = {requirement_name(s) for name, specs in project()["optional-dependencies"].items()
              if name != "test" for s in specs}
    library = sorted((ROOT / "sdprune").rglob("*.py"))
    missing = undeclared(imported_modules(library, top_level_only=True), runtime)
    assert not missing, f"imported when sdprune is, but not a dependency: {missing}"
    missing = undeclared(imported_modules(library), runtime | extras)
    assert not missing, f"imported by sdprune but declared nowhere: {missing}"


def test_the_scan_tells_module_level_from_lazy_imports(tmp_path):
    path = tmp_path / "module.py"
    path.write_text("import numpy\nfrom PIL import Image\nif True:\n    import rich\n"
                    "def f():\n    import matplotlib\n    from onnx import helper\n")
    assert set(imported_modules([path], top_level_only=True)) == {"numpy", "PIL", "rich"}
    assert set(imported_modules([path])) == {"numpy", "PIL", "rich", "matplotlib", "onnx"}
    assert undeclared(imported_modules([path]), {"numpy", "torchvision", "rich", "onnx"}) == {"matplotlib": str(path)}
