"""Where sdprune writes: output locations checked before any work.

``check_output`` proves an output location usable before a command spends its compute
(what it writes is JSON from ``sdprune.report.json_text``, checkpoints, ONNX files): a
command that fails there has written nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from sdprune.errors import SdpruneError


def check_output(path: str | Path, folder: bool, need_bytes: int = 0, what: str = "output") -> Path:
    """Refuse an output location no write can succeed in, before any work; creates nothing.

    ``folder``: the location is a folder (else a file). Refused: a folder asked for where a
    file is (and the reverse), a location below a file, a nearest existing folder that does
    not take a new file (read-only, no permission: proved by a probe file, removed at once),
    and less free space there than ``need_bytes`` where the file system says.
    """
    path = Path(path)
    if path.exists() and folder and not path.is_dir():
        raise SdpruneError(f"cannot write to {what} {path}: it is a file, not a folder")
    if path.is_dir() and not folder:
        raise SdpruneError(f"cannot write to {what} {path}: it is a folder; name a file")
    existing = path if path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SdpruneError(f"cannot write to {what} {path}: {existing} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".sdprune-probe-"):
            pass
    except OSError as err:
        raise SdpruneError(f"cannot write to {what} {path}: {existing} is not writable "
                           f"({err.strerror or type(err).__name__})") from None
    free = _free_bytes(existing)
    if free is not None and free < need_bytes:
        raise SdpruneError(f"cannot write to {what} {path}: {_mib(free)} free on {existing}, "
                           f"about {_mib(need_bytes)} needed")
    return path


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:  # pragma: no cover - a file system that does not say
        return None


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def file_bytes(path: str | Path) -> int:
    """Size of a file, 0 when it cannot be read (a rough need for ``check_output``)."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
