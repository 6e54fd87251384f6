"""The run folder's lock: a second training of the same folder fails at once, a dead holder
blocks nothing, and a training that fails before writing leaves no folder behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import sdprune.train.loop as loop
from sdprune.cli import main
from sdprune.errors import SdpruneError
from sdprune.train.lock import LOCK_FILE, locked_run

HOLD = ("import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, b'%d' % os.getpid())\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n")


def test_a_second_training_of_a_locked_folder_fails_at_once(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"

    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded although the run folder is in use")

    monkeypatch.setattr(loop, "load_data", no_data)
    with locked_run(run):
        assert main(["train", "--model", "resnet20", "--epochs", "1", "--out", str(run)]) == 2
        assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # nothing written
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"sdprune train: error: {run} is being written by another training (pid {os.getpid()})")


def test_the_lock_dies_with_its_holder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(SdpruneError, match=rf"being written by another training \(pid {holder.pid}\)"):
            with locked_run(run):
                pass
    finally:
        holder.kill()  # SIGKILL: no chance to unlock
        holder.wait()
    with locked_run(run):  # the OS released it; the dead pid in the file does not matter
        assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())
    assert (run / LOCK_FILE).exists()  # the file stays (removing it would race with the next holder)


def test_a_failed_start_removes_the_folders_it_made(tmp_path):
    run = tmp_path / "a" / "b" / "run"
    with pytest.raises(SdpruneError, match="no data"):
        with locked_run(run):
            raise SdpruneError("no data")
    assert not (tmp_path / "a").exists()
    (tmp_path / "kept").mkdir()
    with locked_run(tmp_path / "kept"):
        pass
    assert (tmp_path / "kept").is_dir()  # a folder that existed stays


def test_a_folder_that_cannot_be_made_is_one_clean_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SdpruneError, match="cannot write to run folder"):
        with locked_run(tmp_path / "file" / "run"):
            pass


# Holds RUN's lock, starts a forked DataLoader worker (as a streamed run does), says "ready" and waits.
HOLD_WITH_WORKER = ("import sys, time, torch\n"
                    "from pathlib import Path\n"
                    "from sdprune.train.lock import locked_run\n"
                    "with locked_run(Path(sys.argv[1])):\n"
                    "    batches = iter(torch.utils.data.DataLoader(range(1000), batch_size=1, num_workers=1,\n"
                    "                                               multiprocessing_context='fork'))\n"
                    "    next(batches)\n"
                    "    print('ready', flush=True)\n"
                    "    time.sleep(60)\n")


def test_a_killed_runs_decoding_workers_do_not_hold_its_lock(tmp_path, monkeypatch, subprocess_env):
    """kill -9 of a streamed run: its forked workers outlive it for seconds; its resume must not be refused
    for them ("being written by another training", naming the dead process)."""
    import sdprune.train.lock as lock

    monkeypatch.setattr(lock, "HOLDER_GONE_WAIT_S", 0.0)  # no waiting: the workers must not hold it at all
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WITH_WORKER, str(run)], stdout=subprocess.PIPE, text=True,
                              env=subprocess_env)
    try:
        assert holder.stdout.readline() == "ready\n"
    finally:
        holder.kill()
        holder.wait()
    with locked_run(run):  # at once, the orphaned worker still alive
        assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())


# Holds RUN's lock and hands its descriptor to a process it does not control (alive 2 s more), then waits.
HOLD_AND_SHARE = ("import subprocess, sys, time\n"
                  "from pathlib import Path\n"
                  "from sdprune.train import lock\n"
                  "with lock.locked_run(Path(sys.argv[1])):\n"
                  "    subprocess.Popen(['sleep', '2'], pass_fds=list(lock._held))\n"
                  "    print('ready', flush=True)\n"
                  "    time.sleep(60)\n")


def test_a_lock_its_dead_holder_left_to_others_is_waited_for_then_taken(tmp_path, subprocess_env):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_SHARE, str(run)], stdout=subprocess.PIPE, text=True,
                              env=subprocess_env)
    try:
        assert holder.stdout.readline() == "ready\n"
    finally:
        holder.kill()
        holder.wait()
    with locked_run(run):  # the recorded holder is dead: waited for the sleep to let go
        assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_a_holder_not_running_here_is_named_so_not_called_ended(tmp_path, monkeypatch):
    """On a shared folder the recorded pid may be another machine's: the refusal says only what is known."""
    import fcntl

    from sdprune.train import lock

    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"4194000")  # a pid this machine does not run
        monkeypatch.setattr(lock, "HOLDER_GONE_WAIT_S", 0.0)
        monkeypatch.setattr(lock, "process_alive", lambda pid: False)
        with pytest.raises(SdpruneError, match=r"\(pid 4194000, which is not running on this machine: ") as err:
            with locked_run(run):
                pass
        assert "ended" not in str(err.value) and "\n" not in str(err.value)
    finally:
        os.close(fd)
