"""The journal of a stage-one run in progress: finished batches as `.npy` files under
`<stem>.partial/<split>/<start>-<stop>.<sha16>.npy`, so a run stopped any way (Ctrl-C, SIGKILL,
power loss) resumes from its last good batch.

Each batch is written to a temp file, fsync'd, renamed, and its folder fsync'd; its name carries
the SHA-256 of its values. Every batch is checked (shape, dtype, checksum) before it is trusted:
one cut short or damaged is removed and redone, never assembled into a cache.
"""
from __future__ import annotations

import logging
import os
import re
import shutil

import numpy as np

from ..hashing import array_sha256
from ..errors import PipelineError
from ..durable import atomic_file, publish, read_json, write_error, write_json

log = logging.getLogger(__name__)

BATCH = re.compile(r"(\d+)-(\d+)\.([0-9a-f]{16})\.npy")
MAX_PROVENANCE_BYTES = 1 << 20     # a journal's provenance.json is ~2 KB


def digest(a: np.ndarray) -> str:
    return array_sha256(a)[:16]


class Journal:
    def __init__(self, stem: str, provenance: dict, dtype: str):
        self.dir, self.dtype = stem + ".partial", np.dtype(dtype)
        meta_path = os.path.join(self.dir, "provenance.json")
        if os.path.isdir(self.dir):
            meta = read_json(meta_path, MAX_PROVENANCE_BYTES)   # the folder's own regular file (not a link to
            same = meta is not None and meta.get("key") == provenance["key"]   # /dev/zero, never ending)
            if not same:  # another configuration's leftovers, or a journal cut before it began
                shutil.rmtree(self.dir)
        self.resumed = os.path.isdir(self.dir)
        if not self.resumed:
            shutil.rmtree(self.dir + ".new", ignore_errors=True)
            os.makedirs(self.dir + ".new")
            write_json(os.path.join(self.dir + ".new", "provenance.json"), provenance)
            publish(self.dir + ".new", self.dir)

    def _batches(self, split: str) -> list:
        """(start, stop, sha16, file) of every batch file of `split`, in order."""
        d = os.path.join(self.dir, split)
        found = []
        for f in os.listdir(d) if os.path.isdir(d) else []:
            m = BATCH.fullmatch(f)
            if m:
                found.append((int(m[1]), int(m[2]), m[3], os.path.join(d, f)))
        return sorted(found)

    def _load(self, a: int, b: int, sha: str, path: str):
        """The batch's features, or why it cannot be trusted."""
        try:
            x = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            return f"unreadable ({str(e).splitlines()[0][:60]})"
        if x.ndim not in (2, 3) or x.shape[0] != b - a:
            return f"shape {x.shape}, expected {b - a} rows"
        if x.dtype != self.dtype:
            return f"dtype {x.dtype}, expected {self.dtype}"
        if digest(x) != sha:
            return "checksum mismatch"
        return x

    def done(self, split: str, start: int = 0) -> int:
        """End of the contiguous run of good rows from `start`; bad batches are removed (and redone)."""
        end = start
        for a, b, sha, path in self._batches(split):
            got = self._load(a, b, sha, path)
            if isinstance(got, str):
                log.info(f"journal: batch {os.path.basename(path)} of {split} is damaged ({got}); redoing it")
                os.remove(path)
            elif a == end:
                end = b
        return end

    def write(self, split: str, start: int, stop: int, features: np.ndarray):
        d = os.path.join(self.dir, split)
        final = os.path.join(d, f"{start:010d}-{stop:010d}.{digest(features)}.npy")
        try:
            os.makedirs(d, exist_ok=True)
            with atomic_file(final) as tmp, open(tmp, "wb") as f:
                np.save(f, features)
        except OSError as e:
            raise write_error(e, final) from None

    def read(self, split: str, start: int, stop: int):
        """Yield (a, b, features) covering [start, stop) exactly once, in order, each batch checked."""
        end = start
        for a, b, sha, path in self._batches(split):
            if b <= end or a >= stop:
                continue  # a batch from an earlier, differently sized attempt that is already covered
            if a != end:
                raise PipelineError(f"{self.dir}: rows {end}..{a} of {split} are missing; re-run to finish them")
            got = self._load(a, b, sha, path)
            if isinstance(got, str):
                os.remove(path)
                raise PipelineError(f"{self.dir}: batch {os.path.basename(path)} of {split} was damaged ({got}); "
                                    "removed it: re-run the same command to redo it")
            yield a, b, got
            end = b
        if end != stop:
            raise PipelineError(f"{self.dir}: rows {end}..{stop} of {split} are missing; re-run to finish them")

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)
