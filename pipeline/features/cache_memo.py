"""Cache files already verified, remembered by what identifies them on disk (size, mtime_ns,
ctime_ns, inode), as source fingerprints (source_memo.py) and weight digests (hashing.file_sha256)
are: loading an unchanged cache again skips the SHA-256 and finiteness pass over its features.

Any write to a file changes its ctime (which no user can set back), a replaced file its inode, so
a changed cache is verified again in full. The stamp is taken before the verification it vouches
for, so a file changed while it was being verified is verified again next time. The memo holds
nothing but names and numbers (JSON); one it cannot read is ignored, one it cannot write is skipped.
`<cache-dir>/verified-caches.json`: absolute path -> {stamp, checksum (the file's own attribute)}, or {stamp}
for a file whose metadata was read (cache.py reads one it has not read before in a child process first).
"""
from __future__ import annotations

import os

from ..durable import read_json, write_json
from ..errors import PipelineError
from ..hashing import file_stamp

MEMO = "verified-caches.json"
MAX_ENTRIES = 1000      # the newest kept; entries of files that are gone are dropped


def stamp(path: str) -> list | None:
    """The file's identity now, or None when it cannot be read."""
    try:
        return file_stamp(os.stat(path))
    except OSError:
        return None


def _memo(path: str) -> tuple[str, dict]:
    memo_path = os.path.join(os.path.dirname(os.path.abspath(path)), MEMO)
    return memo_path, read_json(memo_path) or {}


def _entry(path: str, now: list | None) -> dict | None:
    """The memo's entry for `path` if it was made when the file had identity `now`."""
    got = _memo(path)[1].get(os.path.abspath(path))
    return got if now is not None and isinstance(got, dict) and got.get("stamp") == now else None


def verified(path: str, checksum: str, now: list | None) -> bool:
    """Whether `path`, with identity `now` and this checksum attribute, was verified before as it is."""
    got = _entry(path, now)
    return got is not None and isinstance(checksum, str) and got.get("checksum") == checksum


def known(path: str, now: list | None) -> bool:
    """Whether `path`, with identity `now`, was read here before (its metadata, or all of it verified)."""
    return _entry(path, now) is not None


def remember_read(path: str, then: list | None) -> None:
    """Record that `path`, not known with identity `then`, had it when its metadata was read."""
    if then is not None:
        _write(path, {"stamp": then})


def remember(path: str, checksum: str, then: list | None) -> None:
    """Record that `path` had identity `then` when its features passed verification."""
    if then is None or not isinstance(checksum, str):
        return
    _write(path, {"stamp": then, "checksum": checksum})


def _write(path: str, entry: dict) -> None:
    memo_path, memo = _memo(path)
    key = os.path.abspath(path)
    memo.pop(key, None)
    kept = [(k, v) for k, v in memo.items() if os.path.exists(k)][-(MAX_ENTRIES - 1):]
    try:
        write_json(memo_path, {**dict(kept), key: entry})
    except (OSError, PipelineError):
        pass            # a read-only cache folder: every load verifies, as without the memo
