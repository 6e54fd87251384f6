"""The table `sdprune models` shows: blocks, parameters and FLOPs of registered architectures.

Each row is counted once on PyTorch's ``meta`` device (``describe_model``: shapes only) and
kept in a small cache file, ``models.json`` in ``$SDPRUNE_CACHE`` (default
``~/.cache/sdprune``), under a key made of everything the counts depend on: the sdprune,
torch and torchvision versions and the source of the network code. A changed network
or library is counted afresh; an unwritable or damaged cache only costs the counting.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from sdprune.files import atomic_write
from sdprune.nets.registry import describe_model, model_info
from sdprune.report import json_text

CACHE_ENV = "SDPRUNE_CACHE"
CACHE_FILE = "models.json"
_FIELDS = {"name": str, "blocks": int, "params": int, "flops": int, "input": list, "description": str}


def cache_dir() -> Path:
    """Where sdprune keeps what it can recompute: ``$SDPRUNE_CACHE``, else ``~/.cache/sdprune``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sdprune")


def fingerprint() -> str:
    """A key that changes whenever a count could: library versions and the network code's source."""
    import torch
    import torchvision

    from sdprune import __version__

    digest = hashlib.sha256(f"{__version__} {torch.__version__} {torchvision.__version__}".encode())
    package = Path(__file__).resolve().parents[1]
    for path in sorted([*package.joinpath("nets").glob("*.py"), *package.joinpath("depth").glob("*.py")]):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def describe_models(names: list[str], num_classes: int, cache: Path | None = None) -> list[dict[str, Any]]:
    """``describe_model`` of each name, from the cache where it holds the row (``cache``: the
    folder, default ``cache_dir()``); rows counted now are added to it."""
    for name in names:  # an unknown name fails before anything is counted
        model_info(name)
    path = (cache or cache_dir()) / CACHE_FILE
    key = fingerprint()
    entries = _read(path).get(key, {})
    rows, counted = [], False
    for name in names:
        row = entries.get(f"{name}/{num_classes}")
        if not _valid(row, name):
            row, counted = describe_model(name, num_classes), True
            entries[f"{name}/{num_classes}"] = row
        rows.append(row)
    if counted:
        _write(path, {key: entries})  # rows of other versions go: they can never be read again
    return rows


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def _valid(row: Any, name: str) -> bool:
    return (isinstance(row, dict) and row.get("name") == name
            and all(isinstance(row.get(k), t) and not isinstance(row.get(k), bool) for k, t in _FIELDS.items()))


def _write(path: Path, data: dict[str, Any]) -> None:
    """Replace the cache file atomically; a cache that cannot be written is no error."""
    text = json_text(data) + "\n"

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)
    try:
        atomic_write(path, write)
    except OSError:
        pass