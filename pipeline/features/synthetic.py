"""Synthetic feature caches (same layout as real ones) for tests and stage-two benchmarks."""
from __future__ import annotations

import numpy as np

from .cache import FORMAT_VERSION, cache_key, write_cache


def make_features(n: int, dim: int, n_classes: int, seed: int = 0, separation: float = 1.0):
    """Class-dependent, ReLU-like features: mean separation controls how easy the task is."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(12345).standard_normal((n_classes, dim), dtype=np.float32)
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    X = rng.standard_normal((n, dim), dtype=np.float32)
    X += separation * centers[y]
    np.maximum(X, 0, out=X)
    return X, y.astype(np.int64)


def write_synthetic_cache(path: str, n_train: int, n_test: int, dim: int = 4096, n_classes: int = 10,
                          seed: int = 0, separation: float = 1.0, views: int = 1, dtype: str = "float32") -> str:
    """A cache of the given size; views > 1: N x K x D, view k = the image's features plus noise."""
    data = {"train": make_features(n_train, dim, n_classes, seed, separation),
            "test": make_features(n_test, dim, n_classes, seed + 1, separation)}
    if views > 1:
        rng = np.random.default_rng(seed + 2)
        data = {s: (np.stack([X] + [np.maximum(X + 0.5 * rng.standard_normal(X.shape, np.float32), 0)
                                    for _ in range(views - 1)], axis=1), y) for s, (X, y) in data.items()}
    data = {s: (X.astype(dtype), y) for s, (X, y) in data.items()}
    payload = {"synthetic": True, "n_train": n_train, "n_test": n_test, "dim": dim, "seed": seed,
               "separation": separation, "views": views, "dtype": dtype}
    prov = {"format_version": FORMAT_VERSION, "key": cache_key(payload), "key_payload": payload,
            "settings": {"layer": "synthetic", "dataset": "synthetic"}, "dataset": "synthetic",
            "class_names": [f"class_{i}" for i in range(n_classes)],
            "split_sizes": {s: len(d[1]) for s, d in data.items()}}
    splits = {s: (y, np.arange(len(y)), 0) for s, (X, y) in data.items()}

    def chunks(s, step=8192):
        X = data[s][0]
        for a in range(0, len(X), step):
            yield a, min(a + step, len(X)), X[a:a + step]
    write_cache(path, prov, splits, chunks)
    return path
