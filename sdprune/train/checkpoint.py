"""Safe checkpoints: tensors plus JSON-able metadata, written atomically.

A checkpoint is a plain dict saved with ``torch.save`` and loaded with
``torch.load(weights_only=True)``; the model is rebuilt from ``meta`` alone (architecture
name and arguments, removed blocks), never unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdprune.depth.structure import remove_blocks
from sdprune.errors import SdpruneError
from sdprune.files import atomic_write, load_weights
from sdprune.nets.registry import create_model
from sdprune.report import Reporter, json_text
from sdprune.train.schema import check_checkpoint, describe_non_finite, non_finite

SCHEMA = 1
FORMAT = "sdprune-checkpoint"


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON (``sdprune.report.json_text``: non-finite numbers as null), atomically."""
    text = json_text(obj) + "\n"

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any],
                    **extra: Any) -> None:
    """Save weights, metadata and optional extras (optimizer state, controller state)."""
    json.dumps(meta)  # fail now, not at load time, if meta is not JSON-able
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "schema": SCHEMA, "meta": meta, "state_dict": state, **extra}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path, reporter: Reporter | None = None, finite: bool = False) -> dict[str, Any]:
    """Load and validate an sdprune checkpoint (weights_only: no code is ever unpickled).

    Every malformed checkpoint is one SdpruneError (``sdprune.train.schema``). Non-finite
    weights are refused with ``finite`` (export, resume: they would produce garbage) and
    otherwise reported as a warning through ``reporter``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise SdpruneError(f"checkpoint {path} not found")
    try:
        ckpt = load_weights(path)
    except Exception as err:  # corrupt file, foreign pickle, truncated write ...
        raise SdpruneError(f"{path} is not a readable sdprune checkpoint ({type(err).__name__})") from None
    return checkpoint_from(ckpt, path, reporter, finite)


def is_checkpoint(obj: Any) -> bool:
    """Whether a loaded object is an sdprune checkpoint (before it is checked)."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def total_blocks(meta: dict[str, Any]) -> int:
    """How many gated blocks the checkpoint's architecture has (pruned or not)."""
    return len(meta["blocks"])


def kept_blocks(meta: dict[str, Any]) -> list[str]:
    """The gated blocks a checkpoint still has, in forward order (all but the removed ones)."""
    removed = set(meta.get("removed") or [])
    return [b for b in meta["blocks"] if b not in removed]


def checkpoint_from(ckpt: Any, path: str | Path, reporter: Reporter | None = None,
                    finite: bool = False) -> dict[str, Any]:
    """``load_checkpoint``'s checks on an object already read from ``path`` (see there)."""
    if not is_checkpoint(ckpt):
        raise SdpruneError(f"{path} is not an sdprune checkpoint")
    check_checkpoint(ckpt, str(path), SCHEMA)
    bad = non_finite(ckpt["state_dict"])
    if bad and finite:
        raise SdpruneError(f"{path}: {describe_non_finite(bad)}; its outputs would be garbage")
    if bad and reporter is not None:
        reporter.warn(f"{path}: {describe_non_finite(bad)}: losses and accuracies below are not meaningful")
    ckpt["path"] = str(path)
    return ckpt


def build_model(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the (possibly pruned) architecture from metadata and load its weights
    (``ckpt`` from ``load_checkpoint``, which proved the two agree)."""

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
