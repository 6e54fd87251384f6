"""Packaging: every third-party module the test suite imports is declared in pyproject.toml."""

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
DISTRIBUTION = {"sklearn": "scikit-learn", "PIL": "pillow", "yaml": "pyyaml", "cv2": "opencv-python",
                "onnxscript": "onnxscript", "google": "protobuf"}
# Distributions a declared dependency always brings along: torchvision requires pillow.
BROUGHT_BY = {"pillow": "torchvision"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    return canonical(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec).group(1))


def imported_modules(paths) -> dict[str, str]:
    """Top-level names of every absolute import in ``paths`` (nested imports too) -> first file."""
    found: dict[str, str] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_modules_the_tests_import_are_declared_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {requirement_name(s) for s in project["dependencies"] + project["optional-dependencies"]["test"]}
    local = {"sdprune", "conftest", "tests"}
    missing = {}
    for module, where in imported_modules(sorted((ROOT / "tests").rglob("*.py"))).items():
        if module in sys.stdlib_module_names or module in local or module == "__future__":
            continue
        dist = canonical(DISTRIBUTION.get(module, module))
        if dist not in declared and BROUGHT_BY.get(dist) not in declared:
            missing[module] = where
    assert not missing, f"imported by the tests but not declared in pyproject.toml: {missing}"
