"""Stage one's plan: settings -> dataset -> fingerprint -> cache key, with no model (cheap: a cache
hit never imports Keras). The key is built from what config.py declares keyed; `provenance` is the
one place that assembles a file's attributes, for whole and sharded runs alike.
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import os
import platform

from ..keras_env import keras_backend_name
from . import pooling
from .weights import weights_identity
from .cache import FORMAT_VERSION, cache_key, cache_stem
from ..durable import make_folder
from ..errors import PipelineError
from .config import FINGERPRINT, FeatureConfig, validate
from .dataset import Dataset
from .fingerprint import fingerprint
from .precision import resolve_precision
from .preprocess import PREPROCESSING
from .source_memo import MEMO, recall, remember, source_identity
from .sources import keras_cifar_folder, open_dataset

BACKBONE = "keras.applications.VGG19"
FINGERPRINT_FIELDS = [f.name for f in dataclasses.fields(FeatureConfig) if f.metadata["key"] == FINGERPRINT]


@dataclasses.dataclass
class Plan:
    cfg: FeatureConfig
    opened: Dataset | None    # the dataset, once opened (a plan from the source memo opens it when built)
    precision: str            # resolved compute dtype
    weights: dict             # the weights' identity (weights.weights_identity)
    fingerprint: str          # the dataset's (fingerprint.fingerprint)
    key_payload: dict         # exactly what the key hashes
    key: str
    stem: str                 # cache path without extension
    identity: str | None = None    # the source's identity when the plan took its fingerprint from the memo

    @property
    def path(self) -> str:
        return self.stem + ".h5"

    @property
    def dataset(self) -> Dataset:
        """The dataset, opened (and every image checked) on first use; PipelineError if it is not what the
        plan's fingerprint (from the memo) says: its files changed since, or the memo's entry was not its
        own (damaged or edited), which is then corrected, so that the next run plans from the truth."""
        if self.opened is None:
            now = _identity(self.cfg)                # before decoding: what the fingerprint below is of
            ds = _open(self.cfg)
            found = fingerprint(ds)
            if found != self.fingerprint:
                remember(self.cfg.cache_dir, now, found, ds.name, ds.class_names)
                where = self.cfg.data_dir or self.cfg.dataset
                if now is not None and now == self.identity:
                    raise PipelineError(f"{where}: the fingerprint {MEMO} remembered for it was not its own (the "
                                        "file damaged or edited); corrected: re-run the command")
                raise PipelineError(f"{where}: the data changed while this run planned it; re-run the command")
            self.opened = ds
        return self.opened


def key_payload(cfg: FeatureConfig, dataset_fingerprint: str, precision: str, weights: dict) -> dict:
    """What changes the numbers: the keyed settings' values, what the resolved ones resolved to, the
    dataset fingerprint (which the fingerprint settings shape), and the fixed parts of the method."""
    backend = keras_backend_name()     # other backends' kernels round differently: their own files (TensorFlow's
    return {"backbone": BACKBONE, "preprocessing": PREPROCESSING, "weights": weights,     # keys as they were)
            "dataset_fingerprint": dataset_fingerprint, "precision": precision, **cfg.keyed(),
            **({"backend": backend} if backend != "tensorflow" else {})}


def plan(cfg: FeatureConfig, datasets: dict | None = None) -> Plan:
    """The plan for `cfg`; `datasets` (optional) remembers datasets already opened and fingerprinted, by
    the settings that decide them, so many plans on the same data decode its images once."""
    cfg = validate(cfg)
    make_folder(cfg.cache_dir, "cache_dir", "FeatureConfig")     # every memo and the cache go here
    which = tuple(getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.metadata["key"] == FINGERPRINT)
    memo = {} if datasets is None else datasets
    if which not in memo:
        identity = _identity(cfg)
        known = recall(cfg.cache_dir, identity)
        if known:                           # the same files as when it was fingerprinted: nothing to decode
            memo[which] = (None, known["fingerprint"], known["name"], identity)
        else:
            ds = _open(cfg)
            memo[which] = (ds, fingerprint(ds), ds.name, None)
            remember(cfg.cache_dir, identity, memo[which][1], ds.name, ds.class_names)
    ds, fp, name, identity = memo[which]
    precision = resolve_precision(cfg.precision, memo_dir=cfg.cache_dir)
    weights = weights_identity(cfg.weights, cfg.weights_seed, pooling.needs_top(cfg.layers), cfg.cache_dir)
    payload = key_payload(cfg, fp, precision, weights)
    key = cache_key(payload)
    return Plan(cfg, ds, precision, weights, fp, payload, key, cache_stem(cfg.cache_dir, name, pooling.slug(cfg.layers), key),
                identity)


def _identity(cfg: FeatureConfig) -> str | None:
    """The identity of cfg's source with the settings that shape its dataset (source_memo.source_identity)."""
    which = [getattr(cfg, f) for f in FINGERPRINT_FIELDS]
    return source_identity(cfg.data_dir or keras_cifar_folder(cfg.dataset), dict(zip(FINGERPRINT_FIELDS, which)))


def _open(cfg: FeatureConfig) -> Dataset:
    return open_dataset(cfg.dataset, cfg.data_dir, cfg.splits, cfg.limit, os.path.join(cfg.cache_dir, "sources"),
                        cfg.on_bad_image, cfg.max_image_pixels, cfg.max_archive_bytes)


def settings(p: Plan) -> dict:
    cfg = p.cfg
    return {**cfg.keyed(), "precision": p.precision, "precision_requested": cfg.precision, "weights": cfg.weights,
            "weights_seed": cfg.weights_seed, "dataset": p.dataset.name, "splits": list(cfg.splits), "limit": cfg.limit}


def provenance(p: Plan, ranges: dict, weights_sha256: str, **extra) -> dict:
    """The attributes of a finished file (whole run, shard or merge): how it was made, from what."""
    ds = p.dataset
    return {"format_version": FORMAT_VERSION, "key": p.key, "key_payload": p.key_payload, "settings": settings(p),
            "backbone": BACKBONE, "preprocessing": PREPROCESSING, "weights": p.weights, "dataset": ds.name,
            "dataset_fingerprint": p.fingerprint, "source": p.cfg.data_dir or "keras.datasets",
            "class_names": list(ds.class_names), "skipped": ds.skipped,
            "split_sizes": {s: len(sp) for s, sp in ds.splits.items()}, "ranges": ranges, "versions": versions(),
            "batch_size": p.cfg.batch_size, "weights_sha256": weights_sha256,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **extra}


def versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform(), "backend": keras_backend_name()}
    for pkg in ("keras", "tensorflow", "jax", "torch", "numpy", "h5py", "opencv-python-headless"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out
