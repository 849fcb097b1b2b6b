"""The feature cache: key, the finished HDF5 file, and its reader.

- key: SHA-256 of exactly the settings that change the numbers (plus FORMAT_VERSION).
- finish: rows come from the run's journal (journal.py), are written to a temp file beside `<stem>.h5`,
  `complete` is set last, then the file is fsync'd and renamed to `<stem>.h5`. A file without
  `complete` is never read as a cache.
- integrity: each split's features, labels and ids carry a SHA-256, and `checksum` covers every
  attribute (provenance, class names, the splits' sums): a file edited or damaged in any of them is
  refused (`DamagedCache`), never used.
- lock: `<stem>.lock` (flock) so two processes never write the same cache.
"""
from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import re
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np

from ..errors import PipelineError
from ..durable import atomic_file, file_lock, stopped_writes, write_error
from ..finite import block_finite
from ..hashing import array_sha256, json_sha256, tag
from ..hdf5_layout import READ_ERRORS, LayoutError, check_file, check_tree, parse_elsewhere
from ..text_table import file_size
from . import cache_memo

log = logging.getLogger(__name__)
SAY_LOAD_BYTES = 1 << 30      # a load of a file this big says so first (a cold read of 7.74 GB took 12-14 s)

FORMAT_VERSION = 2  # bump when the file layout or the meaning of the numbers changes
REBUILD = "extract with the same settings (the features command): it moves the damaged file aside and rebuilds it"


NOT_A_CACHE = ("expected a feature cache: an .h5 file the features command wrote (it prints each one's path; they "
               "live under data/features unless --cache-dir says otherwise)")


class DamagedCache(PipelineError):
    """A cache file that is truncated, incomplete, edited or corrupt: refused, never used."""


class NotACache(DamagedCache):
    """A file that never was a feature cache (not a regular HDF5 file, or one without a cache's attributes):
    refused with NOT_A_CACHE rather than advice to rebuild it; a builder that finds one where its cache
    belongs sets it aside as it does a damaged cache."""


def cache_key(payload: dict) -> str:
    return json_sha256({"format_version": FORMAT_VERSION, **payload})


MAX_SLUG = 96   # characters of the dataset and layers in a file name (NAME_MAX is 255 bytes with suffixes)


def cache_stem(cache_dir: str, dataset_name: str, layer: str, key: str) -> str:
    """`<cache_dir>/<dataset>-vgg19-<layers>-<key16>`; a long dataset or layer part is cut and ends in a
    hash of itself, so any valid layer list makes a valid file name."""
    slug = f"{re.sub(r'[^A-Za-z0-9_-]+', '-', dataset_name).strip('-')}-vgg19-{layer}"
    if len(slug) > MAX_SLUG:
        slug = f"{slug[:MAX_SLUG - 13]}-{tag(slug)}"
    return os.path.join(cache_dir, f"{slug}-{key[:16]}")


def writer_lock(stem: str):
    """Hold `<stem>.lock` for the duration; a second writer stops with a clear message."""
    return file_lock(stem + ".lock", wait=False, busy=f"another process (pid {{pid}}) is writing {stem}.h5; wait for "
                     "it to finish and re-run (it will then be a cache hit)")


def ids_sha256(ids: np.ndarray) -> str:
    """SHA-256 of a split's ids as stored: integers, or UTF-8 strings each ended by a zero byte."""
    if ids.dtype.kind in "iu":
        return array_sha256(ids.astype("<i8"))
    h = hashlib.sha256()
    for i in ids:
        h.update(str(i).encode() + b"\0")
    return h.hexdigest()


def _stored(attrs: dict) -> dict:
    """Attributes as HDF5 keeps them: dicts and lists as JSON text, scalars as they are."""
    out = {}
    for k, v in attrs.items():
        if v is None:
            raise ValueError(f"attribute {k} is None")
        out[k] = json.dumps(v) if isinstance(v, (dict, list, tuple)) else v
    return out


def _checksum(root: dict, splits: dict) -> str:
    """SHA-256 over every root attribute (but `checksum` and `complete`) and every split's attributes."""
    plain = lambda v: v.item() if isinstance(v, np.generic) else (v.decode() if isinstance(v, bytes) else v)  # noqa: E731
    doc = {"root": {k: plain(v) for k, v in root.items() if k not in ("checksum", "complete")},
           "splits": {s: {k: plain(v) for k, v in a.items()} for s, a in splits.items()}}
    return json_sha256(doc)


def write_cache(path: str, provenance: dict, splits: dict, chunks) -> None:
    """Assemble the finished file. `splits`: name -> (labels, ids, first_row); `chunks(name)` yields
    (a, b, features) covering the split exactly once. Written to a temp file, renamed last. Its callers
    in a shared cache folder (build, merge, combine) hold the cache's writer_lock, so a temp file of
    `path` there is a stopped writer's (killed while it wrote, as big as the cache): removed first.
    (A synthetic cache's path is its writer's own.)"""
    for stale in stopped_writes(path):
        try:
            size = os.path.getsize(stale)
            os.remove(stale)
        except OSError:
            continue
        log.info(f"removed {stale}, left by a write of this cache that was stopped ({file_size(size)})")
    try:
        with atomic_file(path) as tmp, h5py.File(tmp, "w") as f:
            split_attrs = {}
            for name, (labels, ids, first_row) in splits.items():
                g = f.create_group(name)
                n, h = len(labels), hashlib.sha256()
                ds = None
                for a, b, feats in chunks(name):
                    if ds is None:
                        ds = g.create_dataset("features", (n, *feats.shape[1:]), dtype=feats.dtype)
                    ds[a - first_row:b - first_row] = feats
                    h.update(memoryview(np.ascontiguousarray(feats)).cast("B"))
                if ds is None:
                    raise ValueError(f"split {name}: no rows to write")
                g.create_dataset("labels", data=labels.astype(np.int64))
                if ids.dtype == object:
                    g.create_dataset("ids", data=ids.astype(str).astype(object), dtype=h5py.string_dtype())
                else:
                    g.create_dataset("ids", data=ids.astype(np.int64))
                split_attrs[name] = {"n": n, "first_row": first_row, "features_sha256": h.hexdigest(),
                                     "labels_sha256": array_sha256(labels.astype("<i8")), "ids_sha256": ids_sha256(ids)}
                g.attrs.update(split_attrs[name])
            root = _stored(provenance)
            f.attrs.update(root)
            f.attrs["checksum"] = _checksum(root, split_attrs)
            f.attrs["complete"] = True  # set last: a file without it is never read as a cache
    except OSError as e:
        raise write_error(e, path) from None


FEATURE_DTYPES = (np.float16, np.float32)


def _check_schema(f: h5py.File):
    """The cache's content model from metadata alone: train and/or test groups of features (N x D or
    N x K x D, float16 or float32), labels (N integers) and ids (N integers or strings); views on
    both splits or neither, one feature width. LayoutError if not."""
    splits = list(f.keys())
    if not splits or not set(splits) <= {"train", "test"}:
        raise LayoutError(f"holds {splits}, expected train and/or test groups")
    shapes = set()
    for s in splits:
        g = f[s]
        if not isinstance(g, h5py.Group) or set(g.keys()) != {"features", "labels", "ids"}:
            raise LayoutError(f"'{s}' holds {sorted(g.keys()) if isinstance(g, h5py.Group) else 'data'}, expected "
                              "features, labels and ids")
        x, y, ids = g["features"], g["labels"], g["ids"]
        if x.dtype not in FEATURE_DTYPES or x.ndim not in (2, 3) or not x.shape[0] or 0 in x.shape:
            raise LayoutError(f"'{s}' features are {x.dtype} {x.shape}, expected N x D or N x K x D float16/float32")
        if y.dtype.kind not in "iu" or y.shape != x.shape[:1]:
            raise LayoutError(f"'{s}' labels are {y.dtype} {y.shape}, expected {x.shape[0]} integers")
        if (ids.dtype.kind not in "iu" and not h5py.check_string_dtype(ids.dtype)) or ids.shape != x.shape[:1]:
            raise LayoutError(f"'{s}' ids are {ids.dtype} {ids.shape}, expected {x.shape[0]} integers or strings")
        shapes.add(x.shape[1:])
    if len(shapes) > 1:
        raise LayoutError(f"the splits' rows differ in shape {sorted(shapes)} (views on one split only, or two widths)")


def _check_content(attrs: dict, groups: dict):
    """What the checksums cannot vouch for (a crafted file carries valid sums of its own): attribute
    types, labels within the class names, split sizes. LayoutError if not."""
    names = attrs.get("class_names")
    if isinstance(names, str):
        try:
            names = json.loads(names)
        except ValueError:
            names = None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise LayoutError("class_names is not a list of names")
    for k in ("settings", "key_payload"):
        if k in attrs and not (isinstance(attrs[k], str) and attrs[k].startswith("{")):
            raise LayoutError(f"attribute {k} is not a JSON object")
    for s, (labels, ids, a) in groups.items():
        if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
            raise LayoutError(f"'{s}' labels {labels.min()}..{labels.max()} fall outside the {len(names)} class names")
        if not isinstance(a.get("n"), (int, np.integer)) or int(a["n"]) != len(labels):
            raise LayoutError(f"'{s}' says n={a.get('n')!r} but holds {len(labels)} rows")


def _read_checked(path: str):
    """(metadata, {split: (labels, ids, split attributes)}), the file's layout and content model
    checked before any data is read, every checksum but the features' verified; a file not read here
    before as it is now is read in a child process first (hdf5_layout.parse_elsewhere)."""
    now = cache_memo.stamp(path)
    known = now is None or cache_memo.known(path, now)      # no identity: nothing to remember it by, as before
    if not known:
        why = parse_elsewhere(path, f"{__name__}:_read_here")
        if why:
            raise DamagedCache(f"cache {path}: refused, {why}; {REBUILD}")
    out = _read_here(path)
    if not known:
        cache_memo.remember_read(path, now)
    return out


def _read_here(path: str):
    what = f"cache {path}"
    try:
        size = check_file(path)
    except LayoutError as e:
        raise NotACache(f"{what}: {e}; {NOT_A_CACHE}") from None
    try:
        with h5py.File(path, "r") as f:
            check_tree(f, size)         # links, external/virtual storage, sizes: metadata only
            if not {"format_version", "key"} & set(f.attrs):
                raise NotACache(f"{what}: an HDF5 file without a cache's attributes (format_version, key); {NOT_A_CACHE}")
            _check_schema(f)
            attrs = dict(f.attrs)
            groups = {k: (f[k]["labels"][()], _ids(f[k]["ids"]), dict(f[k].attrs)) for k in f.keys()}
    except LayoutError as e:
        raise DamagedCache(f"{what}: refused, {e}; {REBUILD}") from None
    except READ_ERRORS as e:
        raise DamagedCache(f"{what}: truncated or corrupt ({str(e).splitlines()[0][:80]}); {REBUILD}") from None
    if not attrs.get("complete"):
        raise DamagedCache(f"{what}: incomplete (no 'complete' mark); {REBUILD}")
    try:
        if attrs.get("checksum") != _checksum(attrs, {s: g[2] for s, g in groups.items()}):
            raise DamagedCache(f"{what}: its attributes (provenance, class names or split checksums) were changed "
                               f"after it was written; {REBUILD}")
    except (TypeError, ValueError) as e:     # attributes json cannot write (an array, bytes that are not text)
        raise DamagedCache(f"{what}: refused, unreadable attributes ({type(e).__name__}); {REBUILD}") from None
    for s, (labels, ids, a) in groups.items():
        if array_sha256(labels.astype("<i8")) != a.get("labels_sha256") or ids_sha256(ids) != a.get("ids_sha256"):
            raise DamagedCache(f"{what}: the '{s}' labels or ids fail their SHA-256 check; {REBUILD}")
    try:
        _check_content(attrs, groups)
    except LayoutError as e:
        raise DamagedCache(f"{what}: refused, {e}; {REBUILD}") from None
    meta = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}
    for k, v in meta.items():
        if isinstance(v, str) and v[:1] in "[{":
            try:
                meta[k] = json.loads(v)
            except ValueError:
                raise DamagedCache(f"{what}: refused, attribute {k} is not valid JSON; {REBUILD}") from None
    meta["split_sizes"] = {s: int(g[2]["n"]) for s, g in groups.items()}
    return meta, groups


def _ids(ds) -> np.ndarray:
    return ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]


def read_provenance(path: str) -> dict:
    """The file's attributes, JSON fields parsed; DamagedCache if it is not a complete, unaltered
    cache (every checksum but the features' is verified: cheap)."""
    return _read_checked(path)[0]


def load_cache(path: str, expect: dict | None = None, splits=None, verify: bool = True, populate: bool = True) -> dict:
    """Load a finished cache: {split: (features, labels, metadata)}; features are read-only arrays
    over the mapped file, so loading costs no copy; populate: its pages read in up front (for the heads,
    which read every row; False for a check that reads none, such as a cache hit's, unless its features
    are verified now).

    Refuses an incomplete, truncated, edited or corrupt file (checksums of the attributes, labels,
    ids and, unless `verify` is False, features: once per version of the file, cache_memo.py), or one
    whose settings differ from `expect` (a dict of setting -> value)."""
    if not os.path.exists(path):
        raise PipelineError(f"cache {path}: not found; build it with extract (the features command)")
    now = cache_memo.stamp(path)           # before anything is read: it vouches for what is verified below
    meta, groups = _read_checked(path)
    for k, want in (expect or {}).items():
        have = meta.get("settings", {}).get(k, meta.get(k))
        if have != want:
            raise PipelineError(f"cache {path}: built with {k}={have!r}, asked for {want!r}; extract with the "
                                "settings you want, or pass the matching cache")
    out, unverified = {}, verify and not cache_memo.verified(path, meta.get("checksum"), now)
    size = os.path.getsize(path)
    if (populate or unverified) and size >= SAY_LOAD_BYTES:     # seconds from a cold disk
        log.info(f"cache {os.path.basename(path)}: reading {file_size(size)}"
                 + (" and checking its SHA-256 (once per version of the file)" if unverified else ""))
    try:
        with h5py.File(path, "r") as f, open(path, "rb") as raw:
            pages = _pages(raw, populate or unverified)      # a verification reads every page: in one go
            for name in splits or list(f.keys()):
                if name not in f:
                    raise PipelineError(f"cache {path}: has no '{name}' split (it has {', '.join(f.keys())}); "
                                        f"extract it again with {name} in its splits")
                labels, ids, _ = groups[name]
                out[name] = (_mapped(f[name]["features"], pages, path), labels, {**meta, "split": name, "ids": ids})
    except READ_ERRORS as e:
        raise DamagedCache(f"cache {path}: corrupt ({str(e).splitlines()[0][:80]}); {REBUILD}") from None
    if unverified:
        _verify(path, out, groups)          # hashlib releases the GIL: one thread per split
        if set(out) == set(groups):        # every split verified: the whole file is
            cache_memo.remember(path, meta.get("checksum"), now)
    return out


def _verify(path: str, out: dict, groups: dict):
    """DamagedCache unless every split in `out` matches its features' SHA-256 and is finite."""
    with ThreadPoolExecutor(max(1, min(len(out), os.cpu_count() or 1))) as pool:
        got = dict(zip(out, pool.map(_digest_finite, (out[n][0] for n in out))))
    for name in out:
        if got[name][0] != groups[name][2]["features_sha256"]:
            raise DamagedCache(f"cache {path}: '{name}' features fail their SHA-256 check; {REBUILD}")
        if not got[name][1]:
            raise DamagedCache(f"cache {path}: refused, '{name}' features hold inf or NaN; {REBUILD}")


def _digest_finite(a: np.ndarray, block_bytes: int = 16 << 20) -> tuple[str, bool]:
    """(SHA-256 of a's bytes, whether every value is finite), in one pass over blocks of rows (the
    finiteness from the exponent bits: finite.py)."""
    h, finite = hashlib.sha256(), True
    step = max(1, block_bytes // max(1, a[:1].nbytes))
    for i in range(0, len(a), step):
        block = np.ascontiguousarray(a[i:i + step])
        h.update(memoryview(block).cast("B"))
        finite = finite and block_finite(block)
    return h.hexdigest(), finite


def _pages(raw, populate: bool = True):
    """The whole file mapped read-only (the page cache, not a copy), pages populated up front if asked."""
    return mmap.mmap(raw.fileno(), 0, flags=mmap.MAP_PRIVATE | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0),
                     prot=mmap.PROT_READ)


def _mapped(ds, pages, path) -> np.ndarray:
    """A read-only array over the mapped file (no copy) for a contiguous, uncompressed dataset (as
    write_cache makes them); a plain read otherwise."""
    offset = ds.id.get_offset()
    if offset is None or ds.chunks or ds.size == 0:
        return ds[()]
    if offset + ds.size * ds.dtype.itemsize > len(pages):
        raise DamagedCache(f"cache {path}: truncated; {REBUILD}")
    return np.frombuffer(pages, ds.dtype, ds.size, offset).reshape(ds.shape)
