"""Output locations are proved usable before any work, and proving it writes nothing."""

from __future__ import annotations

import shutil
import tempfile
from collections import namedtuple

import pytest

from sdprune.errors import SdpruneError
from sdprune.files import check_output


def listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_usable_location_passes_and_nothing_is_created(tmp_path):
    (tmp_path / "run").mkdir()
    before = listing(tmp_path)
    assert check_output(tmp_path / "new" / "deeper", folder=True) == tmp_path / "new" / "deeper"
    check_output(tmp_path / "run", folder=True)
    check_output(tmp_path / "run" / "stats.json", folder=False)
    assert listing(tmp_path) == before  # no folder made, no probe file left


@pytest.mark.parametrize("where,folder,message", [
    ("a-file", True, "it is a file, not a folder"),
    ("a-file/run", True, "a-file is a file, not a folder"),
    ("a-file/stats.json", False, "a-file is a file, not a folder"),
    ("a-dir", False, "it is a folder; name a file"),
])
def test_impossible_locations_are_refused(tmp_path, where, folder, message):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-dir").mkdir()
    with pytest.raises(SdpruneError, match=message):
        check_output(tmp_path / where, folder=folder)


def test_an_unwritable_folder_is_refused(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)  # as a read-only folder answers, root or not
    with pytest.raises(SdpruneError, match=f"{tmp_path} is not writable \\(Permission denied\\)"):
        check_output(tmp_path / "out", folder=True)


def test_too_little_room_is_refused_where_the_file_system_says(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))
    check_output(tmp_path / "out", folder=True, need_bytes=2**19)
    with pytest.raises(SdpruneError, match="1.0 MiB free on .*, about 2.0 MiB needed"):
        check_output(tmp_path / "out", folder=True, need_bytes=2**21)


def test_a_read_only_file_system_is_refused():
    try:
        tempfile.NamedTemporaryFile(dir="/sys").close()
    except OSError:
        pass
    else:
        pytest.skip("/sys takes files on this machine")
    with pytest.raises(SdpruneError, match="not writable"):
        check_output("/sys/sdprune-test/out", folder=True)


def test_input_path_says_missing_looping_and_folder_in_one_line(tmp_path):
    from sdprune.files import input_path

    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dir").mkdir()
    for name, file, message in (("absent", False, "weights file .*absent not found$"),
                                ("loop", False, "weights file .*loop is a symbolic link loop"),
                                ("dir", True, "weights file .*dir is a folder, not a file$")):
        with pytest.raises(SdpruneError, match=f"^{message}") as err:
            input_path(tmp_path / name, "weights file", file=file)
        assert "\n" not in str(err.value)
    assert input_path(tmp_path / "dir", "run folder") == tmp_path / "dir"  # a folder where one is allowed
