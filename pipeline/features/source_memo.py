"""A dataset's fingerprint remembered by what identifies its files on disk, so a cache hit (and
train-head given selection options) decodes nothing.

The identity is a hash of every file and folder of the source as the file system describes it (path,
size, mtime_ns, ctime_ns, inode; a tarball or Keras' batches: the file itself) plus the settings that
shape the dataset. Any write to a file changes its ctime (which no user can set back), a replaced file
its inode, an added or removed file its folder's: then the identity differs and the source is decoded
again. `<cache-dir>/source-fingerprints.json` maps identity -> (fingerprint, name, class names).
"""
from __future__ import annotations

import os

from ..durable import read_json, write_json
from ..hashing import file_stamp, json_sha256
from .fingerprint import FINGERPRINT_VERSION

MEMO = "source-fingerprints.json"


def source_identity(root: str, selection: dict) -> str | None:
    """The identity of the source at `root` (a file or a folder tree) with these selection settings;
    None when it cannot be read (the caller decodes as before and says what is wrong)."""
    entries = []
    if not os.path.exists(root):
        return None
    try:
        if os.path.isfile(root):
            entries.append([os.path.abspath(root), *file_stamp(os.stat(root))])
        else:
            for folder, dirs, files in os.walk(root):
                dirs.sort()
                entries.append([os.path.relpath(folder, root), *file_stamp(os.stat(folder))])
                for name in sorted(files):
                    entries.append([os.path.relpath(os.path.join(folder, name), root),
                                    *file_stamp(os.stat(os.path.join(folder, name)))])
    except OSError:
        return None
    return json_sha256({"version": FINGERPRINT_VERSION, "root": os.path.abspath(root), "selection": selection,
                        "entries": entries})


def recall(memo_dir: str, identity: str | None) -> dict | None:
    """{fingerprint, name, class_names} remembered for `identity`, or None."""
    if identity is None:
        return None
    got = (read_json(os.path.join(memo_dir, MEMO)) or {}).get(identity)
    ok = isinstance(got, dict) and isinstance(got.get("fingerprint"), str) and isinstance(got.get("name"), str) \
        and isinstance(got.get("class_names"), list)
    return got if ok else None


def remember(memo_dir: str, identity: str | None, fingerprint: str, name: str, class_names: list):
    if identity is None:
        return
    path = os.path.join(memo_dir, MEMO)
    memo = read_json(path) or {}
    os.makedirs(memo_dir, exist_ok=True)
    write_json(path, {**memo, identity: {"fingerprint": fingerprint, "name": name, "class_names": list(class_names)}})
