"""Safe checkpoints: tensors plus JSON-able metadata, written atomically.

A checkpoint is a plain dict saved with ``torch.save`` and loaded with
``torch.load(weights_only=True)``; the model is rebuilt from ``meta`` alone (architecture
name and arguments, removed blocks), never unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from sdprune.depth.structure import remove_blocks
from sdprune.errors import SdpruneError
from sdprune.nets.registry import create_model
from sdprune.train import faults
from sdprune.report import Reporter, json_text
from sdprune.train.schema import check_checkpoint, describe_non_finite, non_finite

SCHEMA = 1
FORMAT = "sdprune-checkpoint"
TEMP_SUFFIX = ".tmp"  # atomic_write's temporary files: .<name>.<pid>-<random>.tmp


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, then rename over ``path``: readers never see half a file.

    The temporary file (``.<name>.<pid>-<random>.tmp`` beside ``path``) is removed if
    ``write`` fails; one a killed process left behind is removed by the next command
    writing to that folder (``remove_stale_temps``). The file gets the permissions of the
    user's umask, as ``open`` would give it, not the private 0600 of a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        faults.reached(f"write:{path.name}")
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove the temporary files and folders (``.*.tmp``) killed sdprune processes left in ``folder``.

    A temporary name carries its writer's pid (``.<name>.<pid>-<random>.tmp``); those of
    live processes are left alone, so a command may clean a folder another one writes to.
    Returns what was removed.
    """
    removed = []
    for path in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        stem = path.name[:-len(TEMP_SUFFIX)]
        pid = stem.rsplit(".", 1)[-1].split("-", 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, foreign pickle, truncated write ...
        raise SdpruneError(f"{path} is not a readable sdprune checkpoint ({type(err).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
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
