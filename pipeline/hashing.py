"""File identity by content: a file's SHA-256, hashed once and remembered by what identifies the file
on disk (path, size, mtime_ns, ctime_ns, inode) in `<memo_dir>/file-sha256.json`, so a file replaced
under the same name (cp -p, rsync -t, mv: the inode or ctime changes) is hashed again, never mistaken
for the old one.
"""
from __future__ import annotations

import hashlib
import json
import os

from .durable import write_json

MEMO = "file-sha256.json"


def file_sha256(path: str, memo_dir: str | None = None) -> str:
    """SHA-256 of a file; with memo_dir, remembered there by path, size, mtime, ctime and inode."""
    st = os.stat(path)
    stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    memo_path, memo, key = None, {}, os.path.abspath(path)
    if memo_dir is not None:
        memo_path = os.path.join(memo_dir, MEMO)
        try:
            with open(memo_path) as f:
                memo = json.load(f)
            if memo.get(key, {}).get("stamp") == stamp:
                return memo[key]["sha256"]
        except (OSError, ValueError, AttributeError):
            memo = {}
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    if memo_path is not None:
        os.makedirs(memo_dir, exist_ok=True)
        write_json(memo_path, {**memo, key: {"stamp": stamp, "sha256": h.hexdigest()}})
    return h.hexdigest()
