"""A run folder's lock: one training writes a run folder at a time.

The lock is an OS file lock (``flock``) on ``<run>/.lock``, which also records the
holder's pid for the message another process gets. The operating system releases it
when its holder ends, however it ends (kill -9 included), so a killed run never blocks
its own resume. The file stays once a run has written the folder; a run refused before
writing anything removes the file it created while still holding it, which is safe because
``_acquire`` re-checks that the file it locked is the one at the path.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sdprune.errors import SdpruneError

try:
    import fcntl
except ImportError:  # not a POSIX system: no locking
    fcntl = None

LOCK_FILE = ".lock"


@contextmanager
def locked_run(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock for the scope, creating the folder if needed.

    Raises ``SdpruneError`` at once, naming the holder's pid, if another process holds it.
    Folders this call created are removed again if the scope leaves nothing but the lock
    in them, and a lock file it created in an existing folder goes when the scope fails (a
    training that failed before it wrote anything leaves no trace).
    """
    created = _missing(folder)
    new_lock = not (folder / LOCK_FILE).exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = _acquire(folder)
    except OSError as err:
        _remove_empty(created)
        raise SdpruneError(f"cannot write to run folder {folder}: {err.strerror or err}") from None
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield
    except BaseException:
        # A run refused before it wrote anything leaves the folder as it found it; removing the
        # file while still holding it is safe (_acquire re-checks the file it locked is the one there).
        if new_lock and not created:
            (folder / LOCK_FILE).unlink(missing_ok=True)
        raise
    finally:
        if created and {p.name for p in folder.glob("*")} | {p.name for p in folder.glob(".*")} <= {LOCK_FILE}:
            (folder / LOCK_FILE).unlink(missing_ok=True)
            _remove_empty(created)
        os.close(fd)  # closing the last descriptor releases the lock


def _acquire(folder: Path) -> int:
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise SdpruneError(f"{folder} is being written by another training "
                               f"({'pid ' + holder if holder.isdigit() else 'pid unknown'}); "
                               "wait for it to end or use another --out") from None
        try:  # a holder that gave up may have removed the file before we locked it: lock the one there now
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)


def _missing(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for path in folders:  # deepest first
        try:
            path.rmdir()
        except OSError:
            return
