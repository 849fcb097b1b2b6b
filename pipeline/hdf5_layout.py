"""What an HDF5 file from outside (a cache, a head's weights) may be before any of its data is read.

HDF5 can make a dataset's bytes come from elsewhere: external raw storage (any file on the disk),
virtual datasets (other HDF5 files), soft and external links. It can also declare a dataset far
larger than the file (an unallocated dataset reads as gigabytes of fill value). `check_file` and
`check_tree` refuse all of that from the file's metadata alone: every link hard, every dataset
contiguous (or compact) and inside this file's bytes, every attribute no larger than the file, the
tree shallow and small. Nothing here reads a dataset's data.
"""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys

import h5py
import numpy as np

SIGNATURE = b"\x89HDF\r\n\x1a\n"     # at offset 0: files written without a user block, as h5py writes them
MAX_DEPTH = 8                        # the head file's weights are 4 deep (layers/dense/vars/0), a cache's 2
MAX_OBJECTS = 256                    # groups and datasets in one file (hard links can form cycles: bounded)
COMPACT_LIMIT = 64 << 10             # a compact dataset lives in its object header (HDF5's limit)
PARSE_SECONDS = 60                   # a file's metadata reads in well under a second; a child still reading after this is stuck
READ_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError)   # what h5py raises reading a damaged or
                                     # crafted file: HDF5's errors as the nearest Python class, RuntimeError where it
                                     # has none ("Unable to get group info (bad symbol table node signature)")


class LayoutError(ValueError):
    """The file is not laid out as a plain, self-contained HDF5 file; the message says why."""


def check_file(path: str) -> int:
    """The size of `path` if it is a regular file that starts with the HDF5 signature; LayoutError if
    not (a FIFO, device or folder is refused before it is opened, so nothing blocks on it)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise LayoutError(f"cannot stat it ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise LayoutError("not a regular file")
    with open(path, "rb") as f:
        head = f.read(len(SIGNATURE))
    if head != SIGNATURE:
        raise LayoutError("not an HDF5 file (no signature at its start)")
    return st.st_size


def check_tree(f: h5py.File, file_size: int) -> dict:
    """{path: dataset} of every dataset in `f`, after checking the whole tree's layout (see the module
    docstring) against the file's size in bytes; LayoutError naming the first object that fails."""
    datasets, seen = {}, [0]

    def walk(group, prefix, depth):
        _check_attrs(group, prefix or "/", file_size)
        for name in group:
            where = f"{prefix}/{name}"
            seen[0] += 1
            if seen[0] > MAX_OBJECTS or depth > MAX_DEPTH:
                raise LayoutError(f"more than {MAX_OBJECTS} objects or {MAX_DEPTH} levels")
            link = group.get(name, getlink=True)
            if not isinstance(link, h5py.HardLink):
                raise LayoutError(f"{where} is a {type(link).__name__} (links to other places are refused)")
            obj = group[name]
            if isinstance(obj, h5py.Group):
                walk(obj, where, depth + 1)
            elif isinstance(obj, h5py.Dataset):
                _check_dataset(obj, where, file_size)
                _check_attrs(obj, where, file_size)
                datasets[where.lstrip("/")] = obj
            else:
                raise LayoutError(f"{where} is a {type(obj).__name__}, not a group or dataset")

    walk(f, "", 1)
    return datasets


def stored_bytes(ds: h5py.Dataset) -> int:
    """Bytes the dataset's elements take in the file (variable-length strings: their 16-byte references)."""
    itemsize = 16 if h5py.check_string_dtype(ds.dtype) and ds.dtype.kind == "O" else ds.dtype.itemsize
    return int(np.prod(ds.shape, dtype=np.float64)) * itemsize


def _check_dataset(ds: h5py.Dataset, where: str, file_size: int):
    if ds.is_virtual:
        raise LayoutError(f"{where} is a virtual dataset (its data would come from other files)")
    plist = ds.id.get_create_plist()
    if plist.get_external_count():
        raise LayoutError(f"{where} has external storage (its data would come from another file)")
    layout = plist.get_layout()
    if ds.dtype.kind not in "fiub" and not h5py.check_string_dtype(ds.dtype):
        raise LayoutError(f"{where} holds {ds.dtype}, not numbers or strings")
    size = stored_bytes(ds)
    if layout == h5py.h5d.COMPACT:
        if size > COMPACT_LIMIT:
            raise LayoutError(f"{where} declares {size:,} bytes of compact data")
        return
    if layout != h5py.h5d.CONTIGUOUS:
        raise LayoutError(f"{where} is chunked or otherwise not contiguous in the file")
    offset = ds.id.get_offset()
    if size and (offset is None or offset + size > file_size):
        raise LayoutError(f"{where} declares {size:,} bytes that are not in the file ({file_size:,} bytes)")


def _check_attrs(obj, where: str, file_size: int):
    for name in obj.attrs:
        aid = h5py.h5a.open(obj.id, name.encode() if isinstance(name, str) else name)
        itemsize = 16 if aid.dtype.kind == "O" else aid.dtype.itemsize
        size = int(np.prod(aid.shape or (), dtype=np.float64)) * itemsize
        if size > file_size:
            raise LayoutError(f"attribute {name!r} of {where} declares {size:,} bytes, more than the file holds")


def parse_elsewhere(path: str, reader: str, seconds: float = PARSE_SECONDS) -> str | None:
    """Run `reader` ("module:function", called with the path; whatever it raises is ignored) on `path` in a
    child process first: libhdf5 itself can loop forever or crash on some damaged files (found by fuzzing a
    cache: a global heap collection whose objects are zeroed loops forever when an attribute is read, and
    Ctrl-C cannot stop it; h5py issue 2088, HDF5 issue 1707), which no check in this process could stop.
    None when the child finished (the caller then reads the file itself, for its own checks and messages) or
    could not start; else why the file is refused."""
    code = ("import importlib, sys\nmodule, function = sys.argv[1].split(':')\ntry:\n"
            "    getattr(importlib.import_module(module), function)(sys.argv[2])\nexcept Exception:\n    pass\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}   # the child imports what we do
    try:
        done = subprocess.run([sys.executable, "-c", code, reader, path], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=seconds, env=env)
    except subprocess.TimeoutExpired:
        return f"the HDF5 library did not finish reading its metadata in {seconds:g} s (a damaged file can make it loop)"
    except OSError:
        return None
    if done.returncode == -signal.SIGKILL:        # not ours (a timeout is above): the kernel's, or a person's
        return ("the process reading its metadata was killed (signal 9: out of memory? a damaged file can ask "
                "for any amount)")
    if done.returncode < 0:
        return f"the HDF5 library crashed reading it (signal {-done.returncode})"
    return None
