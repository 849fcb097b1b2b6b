"""Synthetic feature caches (same layout as real ones) for tests and stage-two benchmarks, and random
images in CIFAR-10's python batch layout for the benchmarks' inputs."""
from __future__ import annotations

import os
import pickle
import struct

import numpy as np

from .cache import FORMAT_VERSION, cache_key, write_cache

CHUNK = 5000   # rows generated at a time: a 50,000 x 25,088 cache never sits in memory whole


class _Python2Pickler(pickle._Pickler):
    """Protocol 2 as the official batches were written (Python 2's cPickle): bytes as Python 2's str, raw
    (SHORT_BINSTRING, BINSTRING). Python 3's own protocol 2 writes bytes as a latin-1 text to encode, about
    1.5 times as long for random pixels: a batch of 10,000 then exceeds what the reader takes of an official one."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256 else
                   pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)
    dispatch[bytes] = save_bytes


def _dump_python2(obj, path: str):
    with open(path, "wb") as f:
        _Python2Pickler(f, protocol=2).dump(obj)


def write_cifar_batches(root: str, n_train: int, n_test: int = 10) -> str:
    """n_train (spread over the five train batches) and n_test random 32x32 images in the official CIFAR-10
    python layout, root/cifar-10-batches-py with batches.meta (pickle protocol 2 as upstream wrote it, so a
    batch is as long as an official one); labels cycle through the classes; the content does not affect
    speed. Returns root."""
    from .cifar_batches import CIFAR10_CLASSES
    d = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(d)
    rng = np.random.default_rng(0)
    starts = {f"data_batch_{i}": ((i - 1) * n_train // 5, i * n_train // 5) for i in range(1, 6)}
    for name, (a, b) in {**starts, "test_batch": (0, n_test)}.items():
        _dump_python2({b"data": rng.integers(0, 256, (b - a, 3072), dtype=np.uint8),
                       b"labels": [int(v) for v in np.arange(a, b) % 10]}, os.path.join(d, name))
    _dump_python2({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, os.path.join(d, "batches.meta"))
    return root


def make_features(n: int, dim: int, n_classes: int, seed: int = 0, separation: float = 1.0):
    """Class-dependent, ReLU-like features: mean separation controls how easy the task is."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    return _rows(y, dim, n_classes, rng, separation), y.astype(np.int64)


def _rows(y, dim, n_classes, rng, separation):
    centers = np.random.default_rng(12345).standard_normal((n_classes, dim), dtype=np.float32)
    X = rng.standard_normal((len(y), dim), dtype=np.float32)
    X += separation * centers[y]
    return np.maximum(X, 0, out=X)


def write_synthetic_cache(path: str, n_train: int, n_test: int, dim: int = 4096, n_classes: int = 10,
                          seed: int = 0, separation: float = 1.0, views: int = 1, dtype: str = "float32") -> str:
    """A cache of the given size, written CHUNK rows at a time; views > 1: N x K x D, view k = the
    image's features plus noise."""
    labels = {}
    for s, n, sd in (("train", n_train, seed), ("test", n_test, seed + 1)):
        y = np.arange(n) % n_classes
        np.random.default_rng(sd).shuffle(y)
        labels[s] = (y.astype(np.int64), sd)
    payload = {"synthetic": True, "n_train": n_train, "n_test": n_test, "dim": dim, "seed": seed,
               "separation": separation, "views": views, "dtype": dtype}
    prov = {"format_version": FORMAT_VERSION, "key": cache_key(payload), "key_payload": payload,
            "settings": {"layer": "synthetic", "dataset": "synthetic"}, "dataset": "synthetic",
            "class_names": [f"class_{i}" for i in range(n_classes)],
            "split_sizes": {s: len(y) for s, (y, _) in labels.items()}}
    splits = {s: (y, np.arange(len(y)), 0) for s, (y, _) in labels.items()}

    def chunks(s):
        y, sd = labels[s]
        for c, a in enumerate(range(0, len(y), CHUNK)):
            rng = np.random.default_rng([sd, c])
            X = _rows(y[a:a + CHUNK], dim, n_classes, rng, separation)
            if views > 1:
                X = np.stack([X] + [np.maximum(X + 0.5 * rng.standard_normal(X.shape, np.float32), 0)
                                    for _ in range(views - 1)], axis=1)
            yield a, a + len(X), X.astype(dtype)
    write_cache(path, prov, splits, chunks)
    return path
