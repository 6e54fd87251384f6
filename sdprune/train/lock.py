"""A folder's lock: one sdprune process writes a run folder (or a prune's or an export's
output folder) at a time.

The lock is an OS file lock (``flock``) on ``<folder>/.lock``, which also records the
holder's pid for the message another process gets. The operating system releases it
when its holder ends, however it ends (kill -9 included), so a killed run never blocks
its own resume. A ``flock`` belongs to the open file, which a forked child shares: a
DataLoader worker (forked) would hold the lock for the seconds it outlives a killed
parent, and an automatic restart would be refused, naming a dead process. So every
forked child closes its copy at once (``os.register_at_fork``): only the process that
took the lock holds it. Should something else still hold it after its recorded holder
died, the next process waits a few seconds for it before refusing.

A run folder's lock file stays once a run has written the folder; a run refused before
writing anything removes the file it created while still holding it, and an output
folder's lock file goes when its command ends. Removing it is safe because ``_acquire``
re-checks that the file it locked is the one at the path.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sdprune.errors import SdpruneError
from sdprune.files import process_alive

try:
    import fcntl
except ImportError:  # not a POSIX system: no locking
    fcntl = None

LOCK_FILE = ".lock"
HOLDER_GONE_WAIT_S = 10.0  # how long a lock whose recorded holder is not running here is waited for
_held: set[int] = set()  # descriptors of the locks this process holds


def _forget_in_child() -> None:
    """In a forked child: close the inherited lock descriptors (the parent's, not the child's)."""
    for fd in list(_held):
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


@contextmanager
def locked_run(folder: Path, what: str = "training", keep_file: bool = True) -> Iterator[None]:
    """Hold ``folder``'s lock for the scope, creating the folder if needed.

    Raises ``SdpruneError`` at once, naming the holder's pid, if another process holds it
    (``what`` names that process in the message: "another training"). Folders this call
    created are removed again if the scope leaves nothing but the lock in them, and a lock
    file it created in an existing folder goes when the scope fails (a training that failed
    before it wrote anything leaves no trace). ``keep_file=False`` removes the lock file
    when the scope ends in any case (an output folder holds only what was asked for).
    """
    created = _missing(folder)
    new_lock = not (folder / LOCK_FILE).exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = _acquire(folder, what)
    except OSError as err:
        _remove_empty(created)
        raise SdpruneError(f"cannot write to {'run' if what == 'training' else 'output'} folder {folder}: "
                           f"{err.strerror or err}") from None
    except BaseException:
        _remove_empty(created)
        raise
    _held.add(fd)
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        # Removing the file while still holding it is safe (_acquire re-checks the file it locked is the one there).
        if not keep_file or (failed and new_lock and not created):
            (folder / LOCK_FILE).unlink(missing_ok=True)
        if created and {p.name for p in folder.glob("*")} | {p.name for p in folder.glob(".*")} <= {LOCK_FILE}:
            (folder / LOCK_FILE).unlink(missing_ok=True)
            _remove_empty(created)
        _held.discard(fd)
        os.close(fd)  # closing the last descriptor releases the lock


def _acquire(folder: Path, what: str) -> int:
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is None:
            return fd
        try:
            _lock(fd)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            gone = holder.isdigit() and not process_alive(int(holder))
            elsewhere = (", which is not running on this machine: a process it started, or one on another machine "
                         "sharing this folder, holds the lock") if gone else ""
            raise SdpruneError(f"{folder} is being written by another {what} "
                               f"({'pid ' + holder if holder.isdigit() else 'pid unknown'}{elsewhere}); "
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


def _lock(fd: int) -> None:
    """Take the lock on ``fd`` at once, or raise BlockingIOError. A lock whose recorded holder is
    not running on this machine (something it left behind, or another machine on a shared folder,
    holds it) is waited for, ``HOLDER_GONE_WAIT_S`` at most."""
    deadline = time.monotonic() + HOLDER_GONE_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            if not holder.isdigit() or process_alive(int(holder)) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


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
