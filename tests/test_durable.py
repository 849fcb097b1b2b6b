"""durable.py's failure paths: a folder that cannot be made, a write that fails, as one line naming the setting."""
import errno
import os

import pytest

from pipeline.durable import make_folder, open_own, write_error, writing
from pipeline.errors import PipelineError, SettingError


def test_make_folder_creates_parents_and_accepts_an_existing_folder(tmp_path):
    path = tmp_path / "a" / "b"
    assert make_folder(str(path), "runs_dir") == str(path) and path.is_dir()
    assert make_folder(str(path), "runs_dir") == str(path)


def test_a_folder_that_cannot_be_made_names_the_setting(tmp_path, monkeypatch):
    def refuse(path, exist_ok=False):
        raise PermissionError(errno.EACCES, "Permission denied", path)
    monkeypatch.setattr(os, "makedirs", refuse)
    with pytest.raises(SettingError) as e:
        make_folder(str(tmp_path / "x"), "runs_dir", "RunOptions")
    assert e.value.name == "runs_dir" and "cannot create it (Permission denied)" in e.value.detail


def test_a_folder_that_cannot_be_written_to_is_refused_before_work_that_surely_writes_there(tmp_path, monkeypatch):
    """An existing folder this user cannot write to (root writes anywhere, so the check is simulated): refused when
    it is named for work that will write there, not when the results are written at the end; accepted otherwise (a
    read-only cache folder still serves cache hits)."""
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(SettingError) as e:
        make_folder(str(tmp_path), "out_dir", "bench", will_write=True)
    assert e.value.name == "out_dir" and e.value.detail == (f"{tmp_path}: cannot write to it (permissions, or a "
                                                            "read-only file system); pass a folder you can write to")
    assert make_folder(str(tmp_path), "cache_dir") == str(tmp_path)


def test_a_full_disk_says_which_setting_moves_the_files_and_what_then():
    full = OSError(errno.ENOSPC, "No space left on device")
    msg = str(write_error(full, "/r/run", "runs_dir", "re-run the command"))
    assert msg == ("no space left on the device while writing /r/run; free space or move the runs_dir to a larger "
                   "disk, then re-run the command")
    assert "cache_dir" in str(write_error(full, "/c/x.h5")) and "resume" in str(write_error(full, "/c/x.h5"))
    other = str(write_error(OSError(errno.EROFS, "Read-only file system"), "/r/run"))
    assert other == "cannot write /r/run (Read-only file system); check the folder's permissions and space"


def test_numpys_full_disk_without_an_errno_is_a_full_disk(tmp_path, monkeypatch):
    """np.save to a file on a full disk raises OSError('Not enough free space to write ...') with no errno."""
    import pipeline.durable as durable
    numpy_full = OSError("Not enough free space to write 524288 bytes after offset 128")
    target = str(tmp_path / "c" / "x.partial" / "train" / "0-32.npy")         # its folders not made yet
    free = {"bytes": 1 << 19}
    monkeypatch.setattr(durable.os, "statvfs",                                  # f_frsize 1, f_bavail the bytes
                        lambda d: os.statvfs_result((4096, 1, 0, 0, free["bytes"], 0, 0, 0, 0, 255)))
    assert durable.free_bytes(target) == 1 << 19
    assert str(write_error(numpy_full, target)).startswith(f"no space left on the device while writing {target}; ")
    free["bytes"] = 1 << 40                                                     # plenty free: another cause, named
    assert str(write_error(numpy_full, target)) == (f"cannot write {target} (Not enough free space to write 524288 "
                                                    "bytes after offset 128); check the folder's permissions and space")


def test_writing_turns_only_os_errors_into_one_line():
    with pytest.raises(PipelineError, match="while writing /r/run; .* runs_dir"):
        with writing("/r/run", "runs_dir", "re-run"):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(ValueError):                  # a bug stays a bug, with its traceback
        with writing("/r/run", "runs_dir", "re-run"):
            raise ValueError("not an I/O problem")


def killed_writer(path, size=1000):
    """A process stopped as SIGKILL stops it, inside atomic_file(path) after writing `size` bytes: its temp file."""
    import subprocess
    import sys
    code = ("import os, sys; from pipeline.durable import atomic_file; t = atomic_file(sys.argv[1]).__enter__(); "
            f"open(t, 'wb').write(b'x' * {size}); print(t); os._exit(9)")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert proc.returncode == 9
    return proc.stdout.strip()


def test_stopped_writes_are_found_by_their_path_only(tmp_path):
    from pipeline.durable import atomic_file, stopped_writes
    long_a, long_b = tmp_path / ("c" * 90 + "-a.h5"), tmp_path / ("c" * 90 + "-b.h5")   # the same first 80 characters
    left = [killed_writer(p) for p in (tmp_path / "x.h5", long_a, long_b)]
    assert all(os.path.exists(t) for t in left) and len(set(left)) == 3
    assert stopped_writes(tmp_path / "x.h5") == [left[0]]
    assert stopped_writes(long_a) == [left[1]] and stopped_writes(long_b) == [left[2]]
    assert stopped_writes(tmp_path / "x.json") == [] and stopped_writes(tmp_path / "gone" / "x.h5") == []
    with atomic_file(tmp_path / "x.h5") as tmp:                        # a live writer's temp looks the same:
        assert stopped_writes(tmp_path / "x.h5") == sorted([left[0], tmp])   # only the lock's holder may remove them


class Refused(Exception):
    pass


def test_open_own_reads_a_regular_file_and_refuses_anything_else(tmp_path):
    (tmp_path / "f.json").write_bytes(b"{}")
    with open_own(str(tmp_path / "f.json"), Refused, 2) as f:
        assert f.read() == b"{}"
    with pytest.raises(Refused, match="f.json is larger than 1 bytes"):
        open_own(str(tmp_path / "f.json"), Refused, 1)
    os.symlink(tmp_path / "f.json", tmp_path / "link.json")         # even to a file beside it
    with pytest.raises(Refused, match="link.json is a link"):
        open_own(str(tmp_path / "link.json"), Refused, 100)
    os.mkfifo(tmp_path / "fifo.json")                               # opened without blocking, never read
    with pytest.raises(Refused, match="fifo.json is not a regular file"):
        open_own(str(tmp_path / "fifo.json"), Refused, 100)
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(Refused, match="dir.json is not a regular file"):
        open_own(str(tmp_path / "dir.json"), Refused, 100)
    with pytest.raises(FileNotFoundError):
        open_own(str(tmp_path / "missing.json"), Refused, 100)


def test_read_json_reads_a_programs_own_json_or_nothing(tmp_path):
    """read_json: the values of a small regular JSON file; None, never an exception or a blocked read, for
    a missing file, a link (even to good JSON), a FIFO, a file over its cap, text that is not JSON, and
    JSON nested deeper than the recursion limit (a memo of brackets made every reader stop with a traceback)."""
    import json
    from pipeline.durable import read_json
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"a": [1, 2]}))
    assert read_json(str(good)) == {"a": [1, 2]} and read_json(str(good), max_bytes=5) is None
    os.symlink(good, tmp_path / "link.json")
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    (tmp_path / "text.json").write_text("{not json")
    for name in ("missing.json", "link.json", "fifo.json", "deep.json", "text.json"):
        assert read_json(str(tmp_path / name)) is None, name
