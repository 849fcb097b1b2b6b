"""The features a head trains on: a cache loaded once (mapped, no copy), its train split cut into
train and validation rows (stratified, seeded), its test split whole."""
from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import PipelineError
from ..features.cache import load_cache


@dataclasses.dataclass
class TrainingData:
    X: np.ndarray              # the cache's train split (N x D, read-only over the mapped file)
    y: np.ndarray
    rows_train: np.ndarray     # rows of X the head trains on
    rows_val: np.ndarray       # rows of X held out for model selection
    X_test: np.ndarray
    y_test: np.ndarray
    class_names: list
    cache_path: str
    provenance: dict           # the cache's attributes

    def splits(self) -> dict:
        """{split: (X, y, rows)} for evaluation; train and val share one array."""
        return {"train": (self.X, self.y, self.rows_train), "val": (self.X, self.y, self.rows_val),
                "test": (self.X_test, self.y_test, np.arange(len(self.y_test)))}


def validation_split(y: np.ndarray, fraction: float, seed: int):
    """(train rows, val rows): `fraction` of the rows held out, stratified by class, reproducibly."""
    rows = np.arange(len(y))
    if fraction == 0:
        return rows, rows[:0]
    from sklearn.model_selection import train_test_split
    try:
        train, val = train_test_split(rows, test_size=fraction, stratify=y, random_state=seed)
    except ValueError as e:        # too few rows for a stratified hold-out
        raise PipelineError(f"--val-fraction {fraction}: cannot hold out a stratified {fraction:.0%} of {len(y)} rows "
                            f"({str(e).splitlines()[0][:90]}); change it, or pass --val-fraction 0") from None
    return np.sort(train), np.sort(val)


def load_training_data(cache_path: str, val_fraction: float, seed: int) -> TrainingData:
    cache = load_cache(cache_path, splits=["train", "test"])
    X, y, meta = cache["train"]
    X_test, y_test, _ = cache["test"]
    X, X_test = (a if a.dtype == np.float16 else a.astype(np.float32, copy=False) for a in (X, X_test))
    rows_train, rows_val = validation_split(y, val_fraction, seed)
    if len(np.unique(y[rows_train])) < 2:
        raise PipelineError(f"--val-fraction {val_fraction}: leaves {len(rows_train)} training rows of "
                            f"{len(np.unique(y[rows_train]))} class(es) out of {len(y)}; lower it (a head needs two "
                            "classes to train on)")
    prov = {k: v for k, v in meta.items() if k not in ("ids", "split")}
    return TrainingData(X, y, rows_train, rows_val, X_test, y_test, list(meta["class_names"]), cache_path, prov)
