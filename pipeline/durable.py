"""Files that survive crashes and concurrent runs: flock-held locks, and writes that are fsync'd
(file, then folder) before a rename is trusted, so a power cut never leaves a half-written file
under a final name; and small files read from a folder that may come from anyone (open_own).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
from contextlib import contextmanager

from .errors import PipelineError, SettingError


def open_own(path: str, refuse, max_bytes: int):
    """`path` opened for reading (binary) as its folder's own regular file, at most `max_bytes`; else
    refuse(why), an exception to raise: a link (not followed), a folder, FIFO or device (opened without
    blocking, never read). FileNotFoundError when there is nothing by that name."""
    name = os.path.basename(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise refuse(f"{name} is a link; a folder's files are read as its own: put the file itself there") from None
        raise refuse(f"cannot read {name} ({e.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
        os.close(fd)
        raise refuse(f"{name} is not a regular file" if not stat.S_ISREG(st.st_mode) else
                     f"{name} is larger than {max_bytes:,} bytes")
    return os.fdopen(fd, "rb")


MAX_JSON_BYTES = 64 << 20        # a memo or marker file of this program's (the largest memos are ~100 KB)


class _Unread(Exception):
    pass


def read_json(path: str, max_bytes: int = MAX_JSON_BYTES) -> dict | None:
    """A small JSON object this program writes (a memo, a marker, a journal's provenance, a run's metrics) as
    a dict, or None when there is none or it cannot be one: not the folder's own regular file (open_own: a
    link or FIFO is never followed or read), over max_bytes, not JSON, nested deeper than Python's recursion
    limit (json raises RecursionError: a memo of 200,000 brackets stopped every command that read it with
    a traceback), or JSON that is not an object. Its reader then does without it (a memo is measured or
    computed again)."""
    try:
        with open_own(path, _Unread, max_bytes) as f:
            value = json.loads(f.read(max_bytes + 1))
    except (_Unread, OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


@contextmanager
def file_lock(path: str, wait: bool, busy: str = ""):
    """Hold an exclusive flock on `path` (created if missing; the holder's pid is written in it).
    wait=False: if another process holds it, PipelineError(busy, with that pid filled in for {pid})."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise PipelineError(busy.format(pid=pid)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def fsync_path(path: str):
    """fsync a file or a folder (a folder's fsync makes the names in it, e.g. after a rename, durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: str, final: str):
    """Rename a finished `tmp` to `final` durably: tmp's data first, then the rename, then the folder."""
    if os.path.isfile(tmp):
        fsync_path(tmp)
    os.replace(tmp, final)
    fsync_path(os.path.dirname(os.path.abspath(final)))


TEMP_WRITER = r"(\d+)\.[0-9a-f]{8}"      # in a temp name: the writer's process number and its random part


def _temp_parts(path: str) -> tuple[str, str, str]:
    """(folder, the start of every temp name of `path`, its end): `.<name>.<pid>.<8 hex>.tmp<ext>`, where a
    name longer than 80 characters is cut and ends in a hash of itself (so no two paths share a start)."""
    folder = os.path.dirname(os.path.abspath(path))
    stem, ext = os.path.splitext(os.path.basename(path))        # the extension kept: writers that go by it
    if len(stem) > 80:
        stem = f"{stem[:63]}~{hashlib.sha256(stem.encode()).hexdigest()[:16]}"
    return folder, f".{stem}.", f".tmp{ext[:16]}"


def stopped_writes(path: str) -> list:
    """The temp files atomic_file left for `path` (a writer killed mid-write leaves its temp, up to the
    whole file's size): only a caller that holds the one-writer lock of `path` may remove them, as
    then none of them is a live writer's."""
    folder, start, end = _temp_parts(path)
    name = re.compile(re.escape(start) + TEMP_WRITER + re.escape(end))
    try:
        return sorted(os.path.join(folder, n) for n in os.listdir(folder) if name.fullmatch(n))
    except OSError:
        return []


def temp_writer(name: str, ext: str) -> int | None:
    """The process number in `name` if it is a temp file's name atomic_file gives a file ending in `ext`, else None."""
    m = re.fullmatch(r"\..+\." + TEMP_WRITER + re.escape(f".tmp{ext[:16]}"), name)
    return int(m[1]) if m else None


@contextmanager
def atomic_file(path: str):
    """Write `path` whole or not at all, the one way this program writes a file: yields a temp path of
    this writer's own beside it (created empty, exclusively, with the umask's permissions); when the
    block ends it is fsync'd, renamed into place and the folder fsync'd; if the block fails it is removed."""
    folder, start, end = _temp_parts(path)
    tmp = os.path.join(folder, f"{start}{os.getpid()}.{secrets.token_hex(4)}{end}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_bytes(path: str, data: bytes):
    """Write `path` whole or not at all (atomic_file)."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str, text: str):
    write_bytes(path, text.encode())


def write_json(path: str, obj):
    write_bytes(path, json.dumps(obj, indent=1, default=str).encode())


FULL_DISK_BYTES = 64 << 20     # write_error: a failed write with no errno on a disk with less free is a full disk


def write_error(e: OSError, where: str, folder: str = "cache_dir", then: str = "re-run to resume") -> PipelineError:
    """A failed write as one line: a full disk (free space or move `folder`, the setting that says where
    it goes, then `then`), or another cause (permissions, a folder that is a file). NumPy's own writes
    (np.save to a file) report a full disk without an errno, so such an error on a disk with less than
    FULL_DISK_BYTES free is taken for one."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT) or (e.errno is None and free_bytes(where) < FULL_DISK_BYTES):
        return PipelineError(f"no space left on the device while writing {where}; free space or move the "
                             f"{folder} to a larger disk, then {then}")
    return PipelineError(f"cannot write {where} ({e.strerror or e}); check the folder's permissions and space")


def free_bytes(path: str) -> float:
    """Bytes free to this user on the disk that holds `path` (its nearest existing folder); inf if unknown."""
    folder = os.path.abspath(path)
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        st = os.statvfs(folder)
    except OSError:
        return float("inf")
    return st.f_bavail * st.f_frsize


@contextmanager
def writing(where: str, folder: str, then: str):
    """Any OSError inside as write_error's one line (what was being written, which setting moves it)."""
    try:
        yield
    except OSError as e:
        raise write_error(e, where, folder, then) from None


def make_folder(path: str, name: str, owner: str | None = None, will_write: bool = False) -> str:
    """Create the folder `path` (and its parents) if missing; a SettingError naming the setting `name`
    (of `owner`) where it cannot be (a read-only or special file system, permissions), and with will_write
    where it cannot be written to (for a command that surely writes there: a read-only cache folder still
    serves cache hits)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise SettingError(name, f"{path}: cannot create it ({e.strerror}); pass a folder you can write to",
                           owner) from None
    if will_write and not os.access(path, os.W_OK | os.X_OK):
        raise SettingError(name, f"{path}: cannot write to it (permissions, or a read-only file system); pass a "
                           "folder you can write to", owner)
    return path


def move_aside(path: str) -> str:
    """Rename a damaged file to `<path>.corrupt` (or .corrupt-2, ...): kept for inspection, never read."""
    target, i = path + ".corrupt", 1
    while os.path.exists(target):
        i += 1
        target = f"{path}.corrupt-{i}"
    os.replace(path, target)
    return target


def incomplete_dir(final: str) -> str:
    """A new, empty folder beside `final`, this writer's own (never another run's, never a name a user
    could pick: hidden, random), to fill and then `claim_dir` as `final`."""
    parent, name = os.path.split(os.path.abspath(final))
    return tempfile.mkdtemp(dir=parent, prefix=f".{name[:80]}.", suffix=".incomplete")


def claim_dir(tmp: str, final: str, replace: bool = False):
    """Rename the finished folder `tmp` to `final`, its files and the rename fsync'd. A `final` that
    holds anything is never half-overwritten: FileExistsError, or with replace=True the old folder is
    moved aside whole, the new one renamed in, and the old one removed."""
    for entry in os.scandir(tmp):
        if entry.is_file(follow_symlinks=False):
            fsync_path(entry.path)
    fsync_path(tmp)
    aside = None
    if replace and os.path.exists(final):
        aside = incomplete_dir(final)
        os.rename(final, os.path.join(aside, "old"))
    try:
        os.rename(tmp, final)      # onto an empty folder it succeeds; onto a non-empty one it fails
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise FileExistsError(errno.EEXIST, "taken", final) from None
        raise
    fsync_path(os.path.dirname(os.path.abspath(final)))
    if aside:
        shutil.rmtree(aside, ignore_errors=True)


def folder_or_missing(path: str, name: str, owner: str | None = None) -> str:
    """`path` if it is a folder, or can be made one (its first existing ancestor is a folder); a
    SettingError naming the setting `name` (of `owner`) if not."""
    if not path or not str(path).strip():
        raise SettingError(name, "empty; pass a folder (created if missing)", owner)
    p = os.path.abspath(path)
    while not os.path.exists(p):
        p = os.path.dirname(p)
    if not os.path.isdir(p):
        where = "" if p == os.path.abspath(path) else f"{p} "
        raise SettingError(name, f"{path}: {where}is a file, not a folder; pass a folder (created if missing)", owner)
    return path

