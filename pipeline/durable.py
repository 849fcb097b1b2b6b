"""Files that survive crashes and concurrent runs: flock-held locks, and writes that are fsync'd
(file, then folder) before a rename is trusted, so a power cut never leaves a half-written file
under a final name.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
from contextlib import contextmanager

from .errors import PipelineError


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


def write_bytes(path: str, data: bytes):
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    publish(path + ".tmp", path)


def write_json(path: str, obj):
    write_bytes(path, json.dumps(obj, indent=1, default=str).encode())


def write_error(e: OSError, where: str) -> PipelineError:
    """A failed write as one line: a full disk, or another cause (permissions, a folder that is a file)."""
    if e.errno == errno.ENOSPC:
        return PipelineError(f"no space left on the device while writing {where}; free space or pass "
                             "--cache-dir on a larger disk, then re-run to resume")
    return PipelineError(f"cannot write {where} ({e.strerror}); check the folder's permissions and space")


def move_aside(path: str) -> str:
    """Rename a damaged file to `<path>.corrupt` (or .corrupt-2, ...): kept for inspection, never read."""
    target, i = path + ".corrupt", 1
    while os.path.exists(target):
        i += 1
        target = f"{path}.corrupt-{i}"
    os.replace(path, target)
    return target
