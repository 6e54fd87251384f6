"""Safe checkpoints: tensors plus JSON-able metadata, written atomically.

A checkpoint is a plain dict saved with ``torch.save`` and loaded with
``torch.load(weights_only=True)``; the model is rebuilt from ``meta`` alone (architecture
name and arguments, removed blocks), never unpickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdprune.depth.structure import remove_blocks
from sdprune.errors import SdpruneError
from sdprune.nets.registry import create_model

SCHEMA = 1
FORMAT = "sdprune-checkpoint"


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)``, then rename over ``path``: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
    atomic_write(path, write)


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any],
                    **extra: Any) -> None:
    """Save weights, metadata and optional extras (optimizer state, controller state)."""
    json.dumps(meta)  # fail now, not at load time, if meta is not JSON-able
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "schema": SCHEMA, "meta": meta, "state_dict": state, **extra}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate an sdprune checkpoint (weights_only: no code is ever unpickled)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise SdpruneError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, foreign pickle, truncated write ...
        raise SdpruneError(f"{path} is not a readable sdprune checkpoint ({type(err).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise SdpruneError(f"{path} is not an sdprune checkpoint")
    if ckpt.get("schema", 0) > SCHEMA:
        raise SdpruneError(f"{path} was written by a newer sdprune (schema {ckpt['schema']})")
    ckpt["path"] = str(path)
    return ckpt


def build_model(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the (possibly pruned) architecture from metadata and load its weights."""

    meta = ckpt["meta"]
    arch = meta["model"]
    model = create_model(arch["name"], arch["num_classes"], arch["in_channels"], **arch.get("kwargs", {}))
    if meta.get("removed"):
        remove_blocks(model, meta["removed"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise SdpruneError(f"{ckpt.get('path')}: weights do not match the architecture "
                           f"in its metadata ({str(err).splitlines()[0]})") from None
    model.eval()
    return model
