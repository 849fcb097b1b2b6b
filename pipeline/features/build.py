"""Stage one's builder: extract any set of contiguous row ranges into files of the cache's layout
(a whole cache, or a shard), resuming their journals; several caches that share one forward pass
(the same data, weights, image size, interpolation, precision and views, other layers or pooling)
are built together from it. And whether a finished file is there (checked; a damaged one is moved
aside so it is rebuilt).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time

from .. import device
from ..durable import free_bytes, move_aside
from ..keras_env import keras_backend_name
from ..errors import PipelineError
from ..text_table import file_size
from .backbone import Backbone, build_backbone, fed_pixels
from .weights import model_weights_sha256, warn_random
from .config import KEYED
from .cache import DamagedCache, load_cache, read_provenance, write_cache, writer_lock
from .journal import Journal
from .plan import Plan, provenance, settings
from .stream import BackgroundWriter, extract_range, preparer

log = logging.getLogger(__name__)


def report_hit(p: Plan) -> bool:
    """Say so and return True when the finished cache for `p` already exists (checked in full); a
    damaged one is set aside so that it is rebuilt."""
    if finished_or_set_aside(p.path, p.key, full=True):
        log.info(f"cache hit: {p.path} (same settings and data; no backbone work)")
        return True
    return False


def is_finished(path: str, key: str, full: bool = False) -> bool:
    """A query: True when `path` is a finished, unaltered cache with this key (full: its features'
    SHA-256 checked too). Moves and writes nothing; a damaged file is simply not finished."""
    try:
        return _finished(path, key, full)
    except DamagedCache:
        return False


def finished_or_set_aside(path: str, key: str, full: bool) -> bool:
    """For a builder about to (re)build `path`: `is_finished`, and a damaged file is moved aside to
    `<path>.corrupt` (kept, never read) so that it is rebuilt; a file of another key is left alone."""
    try:
        return _finished(path, key, full)
    except DamagedCache as e:
        aside = move_aside(path)
        log.info(f"{str(e).split(';')[0]}; moved it to {aside} and rebuilding it")
        return False


def _finished(path: str, key: str, full: bool) -> bool:
    if not os.path.exists(path) or read_provenance(path).get("key") != key:
        return False
    if full:
        load_cache(path, populate=False)     # checked (its features once per version of the file), not read
    return True


def pass_of(p: Plan) -> tuple:
    """What one forward pass is: plans equal in this share it. Derived from the settings' declarations:
    the data (fingerprint), the weights and the compute dtype as they resolved, and the value of every
    keyed setting that does not declare shares_pass (layers, pooling and store dtype do)."""
    split = [f.name for f in dataclasses.fields(p.cfg) if f.metadata["key"] == KEYED and not f.metadata["shares_pass"]]
    return (p.fingerprint, json.dumps(p.weights, sort_keys=True), p.precision,
            *((name, getattr(p.cfg, name)) for name in split))


class BuiltBackbone:
    """Build the backbone once per process and pass (shards reuse it)."""

    def __init__(self):
        self._model = self._sig = self._sha = self.device = None

    def get(self, plans: list):
        """The mapper for `plans` (one pass): an output per plan, in order."""
        cfg = plans[0].cfg
        layers = [p.cfg.layers for p in plans]
        union = list(dict.fromkeys(spec for specs in layers for spec in specs))
        sig = (pass_of(plans[0]), tuple(union))
        if self._sig != sig:
            if cfg.weights == "random":
                warn_random(cfg.weights_seed)
            model = build_backbone(union, cfg.image_size, cfg.weights, cfg.weights_seed, plans[0].precision,
                                      plans[0].weights.get("sha256"))
            self._sha = plans[0].weights.get("sha256") or model_weights_sha256(model)   # VGG19's own weights
            self._model, self._sig = fed_pixels(model, union), sig
            self.device, warning = device.where(device.nvidia_gpus(), device.keras_devices(), keras_backend_name())
            log.info(f"features: {self.device}, computing in {plans[0].precision}")
            if warning:
                log.warning(warning)
        return Backbone(self._model, [(specs, p.cfg.store_dtype) for specs, p in zip(layers, plans)], cfg.batch_size,
                        plans[0].precision)

    def sha256(self, plans: list) -> str:
        """SHA-256 of the weights file (imagenet, PATH: checked when the model was built) or of the
        generated weights (random)."""
        if plans[0].weights.get("sha256"):
            return plans[0].weights["sha256"]
        self.get(plans)
        return self._sha


def extract_rows(plans: list, stems: list, ranges: dict, quiet: bool = False, models: BuiltBackbone | None = None) -> dict:
    """Extract rows `ranges` ({split: (start, stop)}) of every plan (one pass) into `<stem>.h5`, resuming
    each `<stem>.partial`."""
    if len({pass_of(p) for p in plans}) != 1:
        raise ValueError("extract_rows: these plans need different forward passes")
    if len(plans[0].cfg.image_sizes) > 1:
        raise ValueError("extract_rows: several image sizes are built a size at a time and combined (sizes.py)")
    models, p0 = models or BuiltBackbone(), plans[0]
    with contextlib.ExitStack() as held:
        for stem in stems:
            held.enter_context(writer_lock(stem))
        todo = [(p, stem) for p, stem in zip(plans, stems) if not finished_or_set_aside(stem + ".h5", p.key, full=False)]
        if not todo:
            return {"hit": True, "images": 0}  # another process finished them while we waited
        journals = [Journal(stem, {"key": p.key, "settings": settings(p), "ranges": ranges}, p.cfg.store_dtype)
                    for p, stem in todo]
        stats, t0, checked = {"images": 0}, time.perf_counter(), []
        rows_total = sum(stop - start for start, stop in ranges.values())
        for i, (split, (start, stop)) in enumerate(ranges.items()):
            done = min(j.done(split, start) for j in journals)
            if done >= stop:
                continue
            model = models.get([p for p, _ in todo])
            rows_after = sum(b - a for a, b in list(ranges.values())[i + 1:])

            def save(a, b, feats, s=split, rows_after=rows_after, stop=stop):
                if not checked:                            # the run's first batch: is there room for the rest?
                    checked.append(True)
                    per_row = sum(f.nbytes for f in feats) / (b - a)
                    check_space(os.path.dirname(stems[0]), per_row * (stop - a + rows_after + rows_total), "this build",
                                "its remaining batches, then the finished file beside them")
                for journal, f in zip(journals, feats):
                    journal.write(s, a, b, f)
            if done > start:
                log.info(f"{split}: resuming at row {done - start} of {stop - start}")
            c = p0.cfg
            prepare = preparer(c.image_size, c.interpolation, c.view_names, c.shift_range, c.views_seed, split)
            t = extract_range(p0.dataset.splits[split], done, stop, model, BackgroundWriter(save),
                              batch_size=c.batch_size, prepare=prepare, quiet=quiet,
                              desc=f"{split}" + (f" (resuming at {done - start})" if done > start else ""))
            stats["images"] += t.pop("images")
            for k, v in t.items():
                stats[k] = stats.get(k, 0.0) + v
        stats["seconds"] = time.perf_counter() - t0
        sha = models.sha256([p for p, _ in todo])
        cost = {"images": stats["images"], "seconds": round(stats["seconds"], 2),        # this run's, when resumed
                "model_s": round(stats.get("model_s", 0.0), 2), "caches_in_pass": len(todo), "device": models.device}
        for (p, stem), journal in zip(todo, journals):
            ds = p.dataset
            splits = {s: (ds.splits[s].labels[a:b], ds.splits[s].ids[a:b], a) for s, (a, b) in ranges.items()}
            write_cache(stem + ".h5", provenance(p, ranges, sha, extraction=cost), splits,
                        lambda s, j=journal: j.read(s, *ranges[s]))
            journal.remove()
        stats["hit"] = False
        return stats


def check_space(cache_dir: str, need: float, what: str, why: str):
    """Say up front where the disk of `cache_dir` has less free than the `need` bytes `what` still writes (`why`:
    what they are): a full disk would stop it there. A build checks at its first batch (its remaining batches,
    then the finished file written beside them before they are removed); combine and merge before they write."""
    free = free_bytes(cache_dir)
    if free < need:
        log.warning(f"{cache_dir}: {what} needs about {file_size(need)} more ({why}) and the disk has "
                    f"{file_size(free)} free; free space, or it stops when the disk is full (re-run then to resume)")


def build_caches(plans: list, quiet: bool = False, models: BuiltBackbone | None = None) -> list:
    """Extract every split of `plans` (one pass) in this process: the finished caches' paths."""
    t0 = time.perf_counter()
    p0 = plans[0]
    for p in plans[1:]:                 # one pass reads one dataset: open it once for all its plans
        if p.opened is None and p.fingerprint == p0.fingerprint:
            p.opened = p0.dataset
    if any(set(p.dataset.splits) != set(p0.dataset.splits) for p in plans):
        raise PipelineError("caches built in one pass must have the same splits")
    stats = extract_rows(plans, [p.stem for p in plans], {s: (0, len(sp)) for s, sp in p0.dataset.splits.items()},
                        quiet=quiet, models=models)
    seconds = time.perf_counter() - t0
    for p in plans:
        size = file_size(os.path.getsize(p.path))
        if stats["hit"]:
            log.info(f"cache hit: {p.path} (finished by another process)")
        else:
            n = stats["images"]
            log.info(f"features: {n} images in {seconds:.1f} s ({n / max(seconds, 1e-9):.1f} img/s incl. start-up; "
                     f"model {stats.get('model_s', 0):.1f} s, waiting for input {stats.get('wait_input_s', 0):.1f} s) "
                     f"-> {p.path} ({size})")
    return [p.path for p in plans]
