"""One way to hash each kind of thing: an array's bytes, a JSON object, a short tag, a file.

A file's identity is its content: its SHA-256, hashed once and remembered by what identifies the file
on disk (path, size, mtime_ns, ctime_ns, inode) in `<memo_dir>/file-sha256.json`, so a file replaced
under the same name (cp -p, rsync -t, mv: the inode or ctime changes) is hashed again, never mistaken
for the old one.
"""
from __future__ import annotations

import hashlib
import json
import os

from .durable import read_json, write_json

MEMO = "file-sha256.json"


def array_sha256(a) -> str:
    """SHA-256 of an array's bytes in C order (no copy when it is contiguous)."""
    import numpy as np
    return hashlib.sha256(memoryview(np.ascontiguousarray(a)).cast("B")).hexdigest()


def json_sha256(obj) -> str:
    """SHA-256 of a JSON object written with sorted keys (values JSON cannot write as their str)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def tag(obj, n: int = 12) -> str:
    """A short name for a JSON object: the first n hex digits of json_sha256."""
    return json_sha256(obj)[:n]


def file_stamp(st: os.stat_result) -> list:
    """What identifies a file on disk, from its stat: size, mtime_ns, ctime_ns (which no user can set
    back: any write moves it) and inode (a replaced file gets another)."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def is_sha256(v) -> bool:
    """A SHA-256 as hexdigest() writes it (a memo entry or a recorded digest that is not one is not believed)."""
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def file_sha256(path: str, memo_dir: str | None = None) -> str:
    """SHA-256 of a file; with memo_dir, remembered there by path, size, mtime, ctime and inode."""
    stamp = file_stamp(os.stat(path))
    memo_path, memo, key = None, {}, os.path.abspath(path)
    if memo_dir is not None:
        memo_path = os.path.join(memo_dir, MEMO)
        memo = read_json(memo_path) or {}
        entry = memo.get(key)
        if isinstance(entry, dict) and entry.get("stamp") == stamp and is_sha256(entry.get("sha256")):
            return entry["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    if memo_path is not None:
        os.makedirs(memo_dir, exist_ok=True)
        write_json(memo_path, {**memo, key: {"stamp": stamp, "sha256": h.hexdigest()}})
    return h.hexdigest()
