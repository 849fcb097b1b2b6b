"""Scale-out: cut each split into N contiguous shards, extract each on its own (here, one after
another, or on Ray actors across GPUs and machines), then merge them into the one cache file a
single run writes.

Each shard is `<stem>.shard-<split>-<start>-<stop>.h5`, built by `build.extract_rows` like a whole
run (same layout and provenance, resumable through its own journal, one writer). Re-running the
same command redoes only unfinished shards. The merge checks that every row is present exactly
once and that all shards share one configuration and dataset fingerprint, then copies the rows
into `<stem>.h5` (copied, not an HDF5 virtual dataset: see README for the measurement).
"""
from __future__ import annotations

import dataclasses
import glob
import logging
import os
import re
import time

import h5py
from tqdm import tqdm

from ..hashing import array_sha256
from .cache import DamagedCache, read_provenance, write_cache, writer_lock
from ..errors import PipelineError
from .config import FeatureConfig
from ..durable import move_aside
from ..text_table import file_size
from .build import BuiltBackbone, check_space, extract_rows, finished_or_set_aside
from .plan import Plan, plan, provenance

log = logging.getLogger(__name__)

SHARD_RE = re.compile(r"\.shard-(\w+)-(\d+)-(\d+)\.h5$")


def shard_ranges(n: int, shards: int, align: int = 1) -> list:
    """Up to N near-equal contiguous [start, stop) ranges covering 0..n, edges on multiples of
    `align` (the batch size: every batch is then the one an unsharded run forms, so the numbers
    are bit-identical, not merely close). At least as many shards as rows give one shard per batch,
    returned at once (a shard count of 30 digits looped here for ever)."""
    if shards >= n:
        return [(a, min(a + align, n)) for a in range(0, n, align)]
    edges = [min(n, round(i * n / shards / align) * align) for i in range(shards)] + [n]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def shard_stem(p: Plan, split: str, a: int, b: int) -> str:
    return f"{p.stem}.shard-{split}-{a:09d}-{b:09d}"


def shard_done(p: Plan, job) -> bool:
    """A finished shard, checked in full (a damaged one is moved aside and will be redone)."""
    return finished_or_set_aside(shard_stem(p, *job) + ".h5", p.key, full=True)


class ShardWorker:
    """Extracts shards with one model kept across them (a Ray actor, or used in-process)."""

    def __init__(self, cfg: dict):
        self.cfg, self.plan, self.models = FeatureConfig(**cfg), None, BuiltBackbone()

    def run(self, split: str, a: int, b: int, key: str):
        if self.plan is None:
            self.plan = plan(self.cfg)
        if self.plan.key != key:
            raise PipelineError(f"worker on {os.uname().nodename} sees other data or settings (key "
                                f"{self.plan.key[:16]} != {key[:16]}); the data and the cache_dir must be "
                                "the same storage on every worker")
        stats = extract_rows([self.plan], [shard_stem(self.plan, split, a, b)], {split: (a, b)}, quiet=True,
                             models=self.models)
        return split, a, b, stats["images"]


def build_in_shards(p: Plan, shards: int, engine: str, ray_address: str | None = None, ray_actors: int | None = None,
                  quiet: bool = False) -> str:
    """Extract `p` in shards (here one after another, or on Ray), then merge them into its cache file."""
    t0, cfg = time.perf_counter(), p.cfg
    jobs = [(s, a, b) for s, sp in p.dataset.splits.items() for a, b in shard_ranges(len(sp), shards, cfg.batch_size)]
    todo = [j for j in jobs if not shard_done(p, j)]
    log.info(f"shards: {len(jobs) - len(todo)} of {len(jobs)} already done; {len(todo)} to extract on {engine}")
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), unit="shard", disable=quiet, desc="shards")
    images, t = 0, time.perf_counter()

    def done(n):
        nonlocal images
        images += n
        bar.update(1)
        bar.set_postfix_str(f"{images / max(time.perf_counter() - t, 1e-9):.1f} img/s")
    try:
        if engine == "ray":
            run_on_ray(cfg, p, todo, ray_address, ray_actors, done)
        else:
            worker = ShardWorker(dataclasses.asdict(cfg))
            worker.plan = p
            for job in todo:
                done(worker.run(*job, p.key)[3])
    finally:
        bar.close()
    merge(p, jobs)
    secs = time.perf_counter() - t0
    log.info(f"features: {images} images in {secs:.1f} s ({images / max(secs, 1e-9):.1f} img/s incl. start-up and merge) "
             f"from {len(jobs)} shards -> {p.path} ({file_size(os.path.getsize(p.path))})")
    return p.path


def run_on_ray(cfg: FeatureConfig, p: Plan, todo: list, address: str | None, n_actors: int | None, done):
    try:
        import ray
    except ImportError:
        raise PipelineError("engine ray needs Ray: pip install -e '.[ray]'") from None
    if not todo:
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
        n_actors = min(len(todo), n_actors or gpus or nodes)
        remote = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1)(ShardWorker)
        actors = [remote.remote(dataclasses.asdict(cfg)) for _ in range(n_actors)]
        pool = ray.util.ActorPool(actors)
        key = p.key
        for _, _, _, n in pool.map_unordered(lambda actor, job: actor.run.remote(*job, key), todo):
            done(n)
    except ray.exceptions.RayActorError as e:
        raise PipelineError(f"a Ray worker died ({str(e).splitlines()[0][:120]}); finished shards are kept and a "
                            "cut shard resumes: re-run the same command to finish the rest") from None
    except ray.exceptions.RayTaskError as e:
        cause = e.cause if isinstance(getattr(e, "cause", None), PipelineError) else None
        raise PipelineError(str(cause) if cause else f"a shard failed on Ray: {str(e).splitlines()[0][:200]}") from None
    finally:
        ray.shutdown()


def merge(p: Plan, jobs: list) -> str:
    """Check the shard files and copy them, in order, into the cache file; then remove them."""
    with writer_lock(p.stem):
        files = sorted(glob.glob(glob.escape(p.stem) + ".shard-*.h5"))
        by_split, shas = {s: [] for s in p.dataset.splits}, set()
        for f in files:
            m = SHARD_RE.search(f)
            try:
                meta = read_provenance(f)
            except DamagedCache as e:
                raise PipelineError(f"shard {e}; moved it to {move_aside(f)}: re-run the same command to redo it") from None
            if meta.get("key") != p.key or meta.get("dataset_fingerprint") != p.fingerprint:
                raise PipelineError(f"shard {f} belongs to another configuration or dataset; move it away and re-run")
            if not m or m[1] not in by_split:
                raise PipelineError(f"shard {f}: unexpected name or split; move it away and re-run")
            by_split[m[1]].append((int(m[2]), int(m[3]), f))
            shas.add(meta.get("weights_sha256"))
        if len(shas) > 1:
            raise PipelineError(f"shards of {p.path} were made with different weights; delete the shard files and re-run")
        for split, sp in p.dataset.splits.items():
            end = 0
            for a, b, f in sorted(by_split[split]):
                if a < end:
                    raise PipelineError(f"shard {f} overlaps rows {a}..{min(end, b)} of {split} (duplicated); remove one")
                if a > end:
                    raise PipelineError(f"rows {end}..{a} of {split} are in no shard; re-run the same command")
                end = b
            if end != len(sp):
                raise PipelineError(f"rows {end}..{len(sp)} of {split} are in no shard; re-run the same command")

        def chunks(split):
            for a, b, f in sorted(by_split[split]):
                with h5py.File(f, "r") as h:
                    feats, want = h[split]["features"][()], h[split].attrs["features_sha256"]
                if array_sha256(feats) != want:
                    raise PipelineError(f"shard {f}: '{split}' features fail their SHA-256 check; moved it to "
                                        f"{move_aside(f)}: re-run the same command to redo it")
                yield a, b, feats
        meta = provenance(p, {s: (0, len(sp)) for s, sp in p.dataset.splits.items()}, shas.pop(),
                          merged_from_shards=len(files))
        check_space(p.cfg.cache_dir, sum(os.path.getsize(f) for f in files), "merging the shards",
                    "the finished file, as large as the shards together")
        ds = p.dataset
        write_cache(p.path, meta, {s: (sp.labels, sp.ids, 0) for s, sp in ds.splits.items()}, chunks)
        for f in files:
            os.remove(f)
            if os.path.exists(f[:-3] + ".lock"):
                os.remove(f[:-3] + ".lock")
    return p.path
