"""What a cache folder holds, for `pipeline caches`: every finished cache with how it was made, every
build in progress with how far it got, and what takes disk space without being a cache (files set
aside as damaged, the temp file of a write that was killed).

Read-only: nothing here writes, moves or deletes. A cache is read as `read_provenance` reads it (its
layout and every checksum but the features', cheap); its features are verified only with `verify`
(as the first load does, remembered in the same memo), else said to be verified where the memo says
this version of the file passed. A build in progress is read from its journal's provenance and
its batch files' names, never their contents.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re

import h5py

from ..durable import free_bytes, read_json, temp_writer
from ..errors import PipelineError
from ..text_table import aligned, escaped, file_size, minute, utc
from . import cache_memo
from .cache import REBUILD, DamagedCache, NotACache, load_cache, read_provenance
from .journal import BATCH, MAX_PROVENANCE_BYTES
from .shards import SHARD_RE

log = logging.getLogger(__name__)

SET_ASIDE = re.compile(r".+\.h5\.corrupt(-\d+)?")


def inventory(cache_dir: str, verify: bool = False) -> list:
    """One dict per cache, build in progress, set-aside file or stale temp file in `cache_dir`, oldest
    first: kind, name, bytes, created, state, and how a cache or build was made (settings, rows, width)."""
    if not os.path.isdir(cache_dir):
        raise PipelineError(f"caches: {cache_dir} is not a folder; give the --cache-dir the features command "
                            "wrote to (default data/features)")
    found = []
    for entry in sorted(os.scandir(cache_dir), key=lambda e: e.name):
        path, name = entry.path, entry.name
        if name.endswith(".h5") and not name.startswith(".") and entry.is_file():
            found.append(_cache(path, verify))
            if SHARD_RE.search(name) and found[-1]["kind"] == "cache":      # rows of a sharded build, not yet merged
                found[-1].update(kind="shard", state=found[-1]["state"] + "; merged into its cache when every shard "
                                 "is built")
        elif name.endswith(".partial") and entry.is_dir(follow_symlinks=False):
            found.append(_build(path))
        elif SET_ASIDE.fullmatch(name) and entry.is_file(follow_symlinks=False):
            found.append(_other(path, "set aside", "damaged, kept for inspection (never read); delete it when done"))
        elif (pid := temp_writer(name, ".h5")) is not None and entry.is_file(follow_symlinks=False):
            found.append(_other(path, "temp", _temp_state(pid)))
    return sorted(found, key=lambda e: (e["created"], e["name"]))


def _other(path: str, kind: str, state: str) -> dict:
    st = os.stat(path, follow_symlinks=False)
    return {"kind": kind, "name": os.path.basename(path), "bytes": st.st_size, "created": utc(st.st_mtime),
            "state": state}


def _temp_state(pid: int) -> str:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return f"left by a write that was stopped (process {pid} is gone); the next build of its cache removes it"
    except OSError:
        pass
    return f"being written by process {pid}, or left by a stopped one whose number was reused"


def _made(settings: dict) -> dict:
    """The settings a user tells caches apart by, as the features command's options spell them."""
    weights = settings.get("weights", "?")
    if weights == "random":
        weights = f"random:{settings.get('weights_seed', 0)}"
    elif weights != "imagenet":
        weights = os.path.basename(str(weights))
    return {"dataset": settings.get("dataset", "?"), "weights": weights, "layer": settings.get("layer", "?"),
            "image_size": settings.get("image_size", "?"), "interpolation": settings.get("interpolation", "?"),
            "views": settings.get("views", "none"), "precision": settings.get("precision", "?"),
            "store_dtype": settings.get("store_dtype", "?")}


def _cache(path: str, verify: bool) -> dict:
    out = _other(path, "cache", "")
    try:
        meta = read_provenance(path)
        checked = cache_memo.verified(path, meta.get("checksum"), cache_memo.stamp(path))
        if verify and not checked:
            log.info(f"caches: verifying {os.path.basename(path)} ({file_size(out['bytes'])}; ~1.5 GB/s)")
            load_cache(path, populate=False)                  # every features' SHA-256, remembered in the memo
    except NotACache as e:
        return {**out, "kind": "other", "state": "not a feature cache: " + _reason(str(e), path)}
    except DamagedCache as e:
        return {**out, "state": "damaged: " + _reason(str(e), path)}
    with h5py.File(path, "r") as f:                           # shapes only: metadata read_provenance checked
        shapes = {s: f[s]["features"].shape for s in f.keys()}
    shape = next(iter(shapes.values()), (0, 0))
    out.update(_made(meta.get("settings", {})), key=str(meta.get("key", ""))[:16],
               created=str(meta.get("created", out["created"])),
               rows={s: int(v[0]) for s, v in sorted(shapes.items(), key=_split_order)}, width=int(shape[-1]),
               n_views=int(shape[1]) if len(shape) == 3 else 1,
               state="verified" if checked or verify else "complete (its features are verified when first used)")
    return out


def _reason(message: str, path: str) -> str:
    """A DamagedCache message without its 'cache PATH: ' and its advice (said once under the table)."""
    message = message.removeprefix(f"cache {path}: ")
    return message.split("; ")[0]


def _build(path: str) -> dict:
    out = _other(path, "building", "")
    try:
        meta = read_json(os.path.join(path, "provenance.json"), MAX_PROVENANCE_BYTES)
        ranges = {str(s): (int(a), int(b)) for s, (a, b) in meta["ranges"].items()}
        settings = meta["settings"] if isinstance(meta["settings"], dict) else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        out["state"] = "a journal without its provenance; the next build of any cache here with its name replaces it"
        return out
    done, size = {}, 0
    for split, (start, stop) in ranges.items():
        d, end = os.path.join(path, split), start
        names = os.listdir(d) if os.path.isdir(d) and not os.path.islink(d) else []
        batches = sorted((int(m[1]), int(m[2])) for m in map(BATCH.fullmatch, names) if m)
        for a, b in batches:
            end = b if a == end else end
        done[split] = (end - start, stop - start)
        size += sum(os.path.getsize(os.path.join(d, n)) for n in names if BATCH.fullmatch(n))
    rows, total = sum(d for d, _ in done.values()), sum(t for _, t in done.values())
    out.update(_made(settings), key=str(meta.get("key", ""))[:16], bytes=size,
               rows={s: d for s, (d, _) in sorted(done.items(), key=_split_order)},
               state=f"{rows:,} of {total:,} rows ({100 * rows / max(total, 1):.0f}%); the same features command "
                     "resumes it")
    return out


def _split_order(item) -> tuple:
    return (item[0] != "train", item[0])       # train first, then the rest by name


COLUMNS = {"created": "created", "kind": "kind", "dataset": "dataset", "weights": "weights", "layer": "layers",
           "image_size": "px", "interpolation": "interp", "views": "views", "dtype": "computed/stored",
           "rows": "rows", "width": "width", "size": "size", "key": "key", "state": "state", "name": "file"}


def table(entries: list, free: float | None = None) -> list:
    """The inventory as aligned text lines: a header, one line per entry, then the totals (and `free`, the
    bytes free on the folder's disk, where known: a cache is built beside its batches, so needs twice its size)."""
    def cell(e, c):
        if c == "size":
            return file_size(e["bytes"])
        if c == "rows" and "rows" in e:
            return " ".join(f"{s}:{n:,}" for s, n in e["rows"].items())
        if c == "dtype" and "precision" in e:
            return f"{e['precision']}/{e['store_dtype']}"
        if c == "width" and "width" in e:
            return f"{e['width']:,}" + (f" x{e['n_views']} views" if e.get("n_views", 1) > 1 else "")
        if c == "created":
            return minute(e["created"])
        return str(e.get(c, "-"))
    lines = aligned([list(COLUMNS.values())] + [[cell(e, c) for c in COLUMNS] for e in entries])
    caches = [e for e in entries if e["kind"] == "cache"]
    lines.append(f"{len(caches)} cache{'' if len(caches) == 1 else 's'}, {file_size(sum(e['bytes'] for e in caches))}; "
                 f"everything listed {file_size(sum(e['bytes'] for e in entries))}"
                 + (f"; {file_size(free)} free on its disk" if free is not None and math.isfinite(free) else ""))
    if any(e["state"].startswith("damaged") for e in caches):
        lines.append(f"a damaged cache is never used: {REBUILD}")
    return lines


def report(cache_dir: str, verify: bool = False, as_json: bool = False) -> tuple[str, str | None]:
    """What `caches` prints: the table (or JSON) of `inventory(cache_dir, verify)`; and with `verify`, when a
    cache failed, the one line that says so (a check that finds damage ends with exit status 1)."""
    entries = inventory(cache_dir, verify=verify)
    if as_json:
        text = json.dumps(entries, indent=1)
    else:
        text = "\n".join(table(entries, free_bytes(cache_dir))) if entries else f"no caches in {cache_dir}"
    damaged = [e["name"] for e in entries if e["kind"] == "cache" and e["state"].startswith("damaged")]
    failed = (f"caches --verify: {len(damaged)} damaged in {cache_dir} ({escaped(', '.join(damaged[:3]))}"
              f"{', ...' if len(damaged) > 3 else ''}); {REBUILD}") if verify and damaged else None
    return text, failed
