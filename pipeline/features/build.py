"""Stage one's builder: extract any set of contiguous row ranges of a plan into one file of the
cache's layout (a whole cache, or a shard), resuming its journal; and whether a finished file is
there (checked; a damaged one is moved aside so it is rebuilt).
"""
from __future__ import annotations

import os
import sys
import time

from ..durable import move_aside
from . import backbone as bb
from . import weights as wt
from .cache import DamagedCache, load_cache, read_provenance, write_cache, writer_lock
from .journal import Journal
from .plan import Plan, provenance, settings
from .runner import BackgroundWriter, extract_range


def report_hit(p: Plan) -> bool:
    """Say so and return True when the finished cache for `p` already exists (checked in full)."""
    if existing(p.path, p.key, full=True):
        print(f"cache hit: {p.path} (same settings and data; no backbone work)", file=sys.stderr)
        return True
    return False


def is_hit(p: Plan) -> bool:
    return existing(p.path, p.key, full=False)


def existing(path: str, key: str, full: bool) -> bool:
    """True when `path` is a finished, unaltered cache with this key (full: its features' SHA-256
    checked too). A damaged file is moved aside to `<path>.corrupt` (kept, never read), so the
    caller rebuilds it; a file of another key is left alone."""
    if not os.path.exists(path):
        return False
    try:
        if read_provenance(path).get("key") != key:
            return False
        if full:
            load_cache(path)
    except DamagedCache as e:
        aside = move_aside(path)
        print(f"{str(e).split(';')[0]}; moved it to {aside} and rebuilding it", file=sys.stderr)
        return False
    return True


class ModelCache:
    """Build the backbone once per process (shards reuse it)."""

    def __init__(self):
        self._model = self._sig = self._sha = None

    def get(self, p: Plan):
        cfg, weights = p.cfg, p.weights
        sig = (cfg.layer, cfg.image_size, cfg.weights, cfg.seed, p.precision, cfg.store_dtype, weights.get("sha256"))
        if self._sig != sig:
            if cfg.weights == "random":
                wt.warn_random(cfg.seed)
            model = bb.build_backbone(cfg.layer, cfg.image_size, cfg.weights, cfg.seed, p.precision, weights.get("sha256"))
            self._sha = weights.get("sha256") or wt.model_weights_sha256(model)
            self._model, self._sig = bb.Backbone(model, cfg.store_dtype), sig
        return self._model

    def sha256(self, p: Plan) -> str:
        """SHA-256 of the weights file (imagenet, PATH: checked when the model was built) or of the
        generated weights (random)."""
        if p.weights.get("sha256"):
            return p.weights["sha256"]
        self.get(p)
        return self._sha


def build_file(p: Plan, stem: str, ranges: dict, quiet: bool = False, models: ModelCache | None = None) -> dict:
    """Extract rows `ranges` ({split: (start, stop)}) into `<stem>.h5`, resuming `<stem>.partial`."""
    models = models or ModelCache()
    with writer_lock(stem):
        if existing(stem + ".h5", p.key, full=False):
            return {"hit": True, "images": 0}  # another process finished it while we waited
        journal = Journal(stem, {"key": p.key, "settings": settings(p), "ranges": ranges}, p.cfg.store_dtype)
        stats, t0 = {"images": 0, "resumed": journal.resumed}, time.perf_counter()
        for split, (start, stop) in ranges.items():
            done = journal.done(split, start)
            if done >= stop:
                continue
            model = models.get(p)
            writer = BackgroundWriter(lambda a, b, f, s=split: journal.write(s, a, b, f))
            note = f" (resuming at {done - start})" if done > start else ""
            if note:
                print(f"{split}: resuming at row {done - start} of {stop - start}", file=sys.stderr)
            t = extract_range(p.dataset.splits[split], done, stop, model, writer, batch_size=p.cfg.batch_size,
                              image_size=p.cfg.image_size, interpolation=p.cfg.interpolation,
                              desc=f"{split}{note}", quiet=quiet)
            stats["images"] += t.pop("images")
            for k, v in t.items():
                stats[k] = stats.get(k, 0.0) + v
        stats["seconds"] = time.perf_counter() - t0
        ds = p.dataset
        meta = provenance(p, ranges, models.sha256(p))
        splits = {s: (ds.splits[s].labels[a:b], ds.splits[s].ids[a:b], a) for s, (a, b) in ranges.items()}
        write_cache(stem + ".h5", meta, splits, lambda s: journal.read(s, *ranges[s]))
        journal.remove()
        stats["hit"] = False
        return stats


def build_whole(p: Plan, quiet: bool = False, models: ModelCache | None = None) -> str:
    """Extract every split of `p` in this process: the finished cache's path (built, resumed or a hit)."""
    t0 = time.perf_counter()
    stats = build_file(p, p.stem, {s: (0, len(sp)) for s, sp in p.dataset.splits.items()}, quiet=quiet, models=models)
    seconds = time.perf_counter() - t0
    size = os.path.getsize(p.path) / 1e6
    if stats["hit"]:
        print(f"cache hit: {p.path} (finished by another process)", file=sys.stderr)
    else:
        n = stats["images"]
        print(f"features: {n} images in {seconds:.1f} s ({n / max(seconds, 1e-9):.1f} img/s incl. start-up; "
              f"model {stats.get('model_s', 0):.1f} s, waiting for input {stats.get('wait_input_s', 0):.1f} s) "
              f"-> {p.path} ({size:.1f} MB)", file=sys.stderr)
    return p.path
