"""The feature cache: key, resumable partial runs, the finished HDF5 file, and its reader.

- key: SHA-256 of exactly the settings that change the numbers (plus FORMAT_VERSION).
- partial run: `<stem>.partial/<split>/<start>-<stop>.npy`, one file per written batch, each
  moved into place whole, so a run stopped any way resumes from its last complete batch.
- finish: all rows checked present once, written to `<stem>.h5.tmp`, `complete` set last, then
  renamed atomically to `<stem>.h5`. A file without `complete` is never read as a cache.
- lock: `<stem>.lock` (flock) so two processes never write the same cache.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import mmap
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import h5py
import numpy as np

from .config import PipelineError

FORMAT_VERSION = 1  # bump when the file layout or the meaning of the numbers changes


def cache_key(payload: dict) -> str:
    return hashlib.sha256(json.dumps({"format_version": FORMAT_VERSION, **payload}, sort_keys=True).encode()).hexdigest()


def cache_stem(cache_dir: str, dataset_name: str, layer: str, key: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", dataset_name).strip("-")
    return os.path.join(cache_dir, f"{slug}-vgg19-{layer}-{key[:16]}")


def disk_full(e: OSError, where: str) -> PipelineError:
    if e.errno == errno.ENOSPC:
        return PipelineError(f"no space left on the device while writing {where}; free space or pass "
                             "--cache-dir on a larger disk, then re-run to resume")
    return PipelineError(f"cannot write {where} ({e.strerror}); check the folder's permissions and space")


@contextmanager
def writer_lock(stem: str):
    """Hold `<stem>.lock` for the duration; a second writer stops with a clear message."""
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    fd = os.open(stem + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise PipelineError(f"another process (pid {pid}) is writing {stem}.h5; wait for it to finish and "
                                "re-run (it will then be a cache hit)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock


class PartialRun:
    """The journal of a run in progress: finished batches as .npy files under `<stem>.partial/`."""

    def __init__(self, stem: str, provenance: dict):
        self.dir = stem + ".partial"
        meta_path = os.path.join(self.dir, "provenance.json")
        if os.path.isdir(self.dir):
            try:
                with open(meta_path) as f:
                    same = json.load(f)["key"] == provenance["key"]
            except (OSError, ValueError, KeyError):
                same = False
            if not same:  # another configuration's leftovers, or a journal cut before it began
                shutil.rmtree(self.dir)
        self.resumed = os.path.isdir(self.dir)
        if not self.resumed:
            os.makedirs(self.dir + ".new", exist_ok=True)
            _write_json(os.path.join(self.dir + ".new", "provenance.json"), provenance)
            os.replace(self.dir + ".new", self.dir)

    def ranges(self, split: str) -> list:
        d = os.path.join(self.dir, split)
        found = []
        for f in os.listdir(d) if os.path.isdir(d) else []:
            m = re.fullmatch(r"(\d+)-(\d+)\.npy", f)
            if m:
                found.append((int(m[1]), int(m[2])))
        return sorted(found)

    def done(self, split: str, start: int = 0) -> int:
        """End of the contiguous run of finished rows from `start`."""
        end = start
        for a, b in self.ranges(split):
            if a == end:
                end = b
        return end

    def write(self, split: str, start: int, stop: int, features: np.ndarray):
        d = os.path.join(self.dir, split)
        os.makedirs(d, exist_ok=True)
        final = os.path.join(d, f"{start:010d}-{stop:010d}.npy")
        tmp = final + ".tmp"
        try:
            with open(tmp, "wb") as f:
                np.save(f, features)
            os.replace(tmp, final)
        except OSError as e:
            raise disk_full(e, final) from None

    def read(self, split: str, start: int, stop: int):
        """Yield (a, b, features) covering [start, stop) exactly once, in order."""
        end = start
        for a, b in self.ranges(split):
            if b <= end or a >= stop:
                continue  # a batch from an earlier, differently sized attempt that is already covered
            if a != end:
                raise PipelineError(f"{self.dir}: rows {end}..{a} of {split} are missing; re-run to finish them")
            yield a, b, np.load(os.path.join(self.dir, split, f"{a:010d}-{b:010d}.npy"))
            end = b
        if end != stop:
            raise PipelineError(f"{self.dir}: rows {end}..{stop} of {split} are missing; re-run to finish them")

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def _write_json(path: str, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(path + ".tmp", path)


def write_cache(path: str, provenance: dict, splits: dict, chunks) -> None:
    """Assemble the finished file. `splits`: name -> (labels, ids, first_row); `chunks(name)` yields
    (a, b, features) covering the split exactly once. Written to a temp file, renamed last."""
    tmp = path + ".tmp"
    try:
        with h5py.File(tmp, "w") as f:
            for name, (labels, ids, first_row) in splits.items():
                g = f.create_group(name)
                n, h = len(labels), hashlib.sha256()
                ds = None
                for a, b, feats in chunks(name):
                    if ds is None:
                        ds = g.create_dataset("features", (n, feats.shape[1]), dtype=feats.dtype)
                    ds[a - first_row:b - first_row] = feats
                    h.update(memoryview(np.ascontiguousarray(feats)).cast("B"))
                g.create_dataset("labels", data=labels.astype(np.int64))
                if ids.dtype == object:
                    g.create_dataset("ids", data=ids.astype(str).astype(object), dtype=h5py.string_dtype())
                else:
                    g.create_dataset("ids", data=ids.astype(np.int64))
                g.attrs.update(n=n, first_row=first_row, features_sha256=h.hexdigest())
            f.attrs.update({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in provenance.items()})
            f.attrs["complete"] = True  # set last: a file without it is never read as a cache
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise disk_full(e, path) from None


def sha256_of(a: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(a)).cast("B")).hexdigest()


def read_provenance(path: str) -> dict:
    """The file's attributes, JSON fields parsed; PipelineError if it is not a complete cache."""
    what = f"cache {path}"
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            groups = {k: int(f[k].attrs.get("n", -1)) for k in f.keys()}
    except (OSError, KeyError) as e:
        raise PipelineError(f"{what}: truncated or corrupt ({str(e).splitlines()[0][:100]}); delete it and re-run "
                            "make features") from None
    if not attrs.get("complete"):
        raise PipelineError(f"{what}: incomplete (no 'complete' mark); re-run the same make features to finish it")
    meta = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}
    for k, v in meta.items():
        if isinstance(v, str) and v[:1] in "[{":
            meta[k] = json.loads(v)
    meta["split_sizes"] = groups
    return meta


def load_cache(path: str, expect: dict | None = None, splits=None, verify: bool = True) -> dict:
    """Load a finished cache: {split: (features, labels, metadata)}; features are read-only arrays
    over the mapped file, so loading costs no copy.

    Refuses an incomplete, truncated or corrupt file (SHA-256 of each split's features, unless
    `verify` is False), or one whose settings differ from `expect` (a dict of setting -> value)."""
    if not os.path.exists(path):
        raise PipelineError(f"cache {path}: not found; build it with make features")
    meta = read_provenance(path)
    for k, want in (expect or {}).items():
        have = meta.get("settings", {}).get(k, meta.get(k))
        if have != want:
            raise PipelineError(f"cache {path}: built with {k}={have!r}, asked for {want!r}; run make features "
                                "with the settings you want, or pass the matching cache")
    out, sums = {}, {}
    try:
        with h5py.File(path, "r") as f, open(path, "rb") as raw:
            pages = _pages(raw)
            for name in splits or list(f.keys()):
                if name not in f:
                    raise PipelineError(f"cache {path}: has no '{name}' split (it has {', '.join(f.keys())}); "
                                        f"re-run make features with --splits including {name}")
                g = f[name]
                feats = _mapped(g["features"], pages, path)
                out[name] = (feats, g["labels"][()], {**meta, "split": name, "ids": g["ids"][()]})
                sums[name] = g.attrs["features_sha256"]
    except OSError as e:
        raise PipelineError(f"cache {path}: corrupt ({str(e).splitlines()[0][:100]}); delete it and re-run "
                            "make features") from None
    if verify:      # hashlib releases the GIL: one thread per split
        with ThreadPoolExecutor(max(1, min(len(out), os.cpu_count() or 1))) as pool:
            got = dict(zip(out, pool.map(sha256_of, (out[n][0] for n in out))))
        for name in out:
            if got[name] != sums[name]:
                raise PipelineError(f"cache {path}: '{name}' features fail their SHA-256 check; delete the file and "
                                    "re-run make features")
    return out


def _pages(raw):
    """The whole file mapped read-only, pages populated up front (the page cache, not a copy)."""
    return mmap.mmap(raw.fileno(), 0, flags=mmap.MAP_PRIVATE | getattr(mmap, "MAP_POPULATE", 0), prot=mmap.PROT_READ)


def _mapped(ds, pages, path) -> np.ndarray:
    """A read-only array over the mapped file (no copy) for a contiguous, uncompressed dataset (as
    write_cache makes them); a plain read otherwise."""
    offset = ds.id.get_offset()
    if offset is None or ds.chunks or ds.size == 0:
        return ds[()]
    if offset + ds.size * ds.dtype.itemsize > len(pages):
        raise PipelineError(f"cache {path}: truncated; delete it and re-run make features")
    return np.frombuffer(pages, ds.dtype, ds.size, offset).reshape(ds.shape)
