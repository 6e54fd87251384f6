"""Where sdprune writes: output locations checked before any work, and atomic writes.

``check_output`` proves an output location usable before a command spends its compute
(what it writes is JSON from ``sdprune.report.json_text``, checkpoints, ONNX files): a
command that fails there has written nothing.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

from sdprune import faults
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


def input_path(path: str | Path, what: str, file: bool = False) -> Path:
    """``path`` as a Path when something is there to read; else one clear error naming ``what``
    (not found, or a symbolic link loop, which ``Path.resolve`` would turn into a traceback).
    ``file``: it must be a regular file (a folder there is refused as one, not reported
    missing). The one way sdprune says an input is missing."""
    try:
        st = os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise SdpruneError(f"{what} {path} is a symbolic link loop (it never reaches a file)") from None
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise SdpruneError(f"{what} {path} not found") from None
        raise SdpruneError(f"cannot read {what} {path}: {err.strerror or type(err).__name__}") from None
    if file and not stat.S_ISREG(st.st_mode):  # a folder, a pipe, a device: nothing to load
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a special file"
        raise SdpruneError(f"{what} {path} is {kind}, not a file")
    return Path(path)


def load_weights(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain containers only,
    no code ever unpickled. The one place sdprune reads a torch file.

    torch's warnings while reading (e.g. "Detected pickle protocol 4" before it refuses a
    plain pickle) are silenced: the caller turns a refusal into one line of its own, and a
    warning printed above that line would break it. Raises whatever ``torch.load`` raises.
    """
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


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
        if pid.isdigit() and process_alive(int(pid)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's counts): the holder a temporary file or a lock names."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
