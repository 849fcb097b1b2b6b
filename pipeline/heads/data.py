"""The features a head trains on: a cache loaded once (mapped, no copy), its train split cut into
train and validation images (stratified, seeded), its test split whole.

A cache with K augmented views per image (N x K x D) is seen as N*K rows, row i*K + k being view k
of image i (a reshape: no copy). Heads train on every view of the training images; validation and
test are scored on the original views (row i*K), and with test-time augmentation: the mean of the
probabilities of an image's K views. Validation images never share an image with training rows.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging

import numpy as np

from ..errors import SettingError
from ..features.cache import load_cache
from .normalize import blocks_of

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainingData:
    X: np.ndarray              # the cache's train split as rows (N*K x D, read-only over the mapped file)
    y: np.ndarray              # label of each row
    rows_train: np.ndarray     # rows the head trains on: every view of the training images
    rows_val: np.ndarray       # original-view rows of the validation images
    X_test: np.ndarray
    y_test: np.ndarray
    class_names: list
    cache_path: str
    provenance: dict           # the cache's attributes
    views: int = 1             # K
    verified: bool = False     # X and X_test passed their cache's SHA-256 and finiteness check (load_training_data)

    def blocks(self) -> list[int]:
        """The widths of the cache's layer blocks (heads' normalize step)."""
        return blocks_of(self.provenance, self.X.shape[1])

    def checked(self):
        """A context in which the heads skip their own finiteness pass over these features (scikit-learn's
        `assume_finite`) when the cache's load has checked them already (verified); otherwise nothing changes."""
        if not self.verified:
            return contextlib.nullcontext()
        from sklearn import config_context
        return config_context(assume_finite=True)

    def originals(self, rows) -> np.ndarray:
        """The original-view rows among `rows`."""
        rows = np.asarray(rows)
        return rows[rows % self.views == 0]

    def splits(self) -> dict:
        """{split: (X, y, original-view rows)} for evaluation; train and val share one array."""
        return {"train": (self.X, self.y, self.originals(self.rows_train)), "val": (self.X, self.y, self.rows_val),
                "test": (self.X_test, self.y_test, np.arange(0, len(self.y_test), self.views))}

    def labelled_images(self) -> int:
        """The training and validation images (not their views): what a refit adds up to."""
        return len(self.rows_train) // self.views + len(self.rows_val)

    def train_and_val_rows(self) -> np.ndarray:
        """Every view's row of the training and the validation images: what a refit trains on."""
        return np.sort(np.concatenate([self.rows_train, self.views_of(self.rows_val)]))

    def views_of(self, rows) -> np.ndarray:
        """Every view's row of the images of the original-view `rows`, image by image."""
        return (np.asarray(rows)[:, None] + np.arange(self.views)).ravel()

    def view_proba(self, head, X: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """len(rows) x K x C: `head`'s probabilities for every view of the images of the original-view
        `rows` of X (view 0 the original)."""
        return head.predict_proba(X[self.views_of(rows)]).reshape(len(rows), self.views, -1)

    def with_train_images(self, n: int | None, seed: int, val_fraction: float) -> "TrainingData":
        """The same cache with only a stratified, seeded subset of n of its train split's images, the
        validation split carved from them (see split_images)."""
        images_train, images_val = split_images(self.y[::self.views], val_fraction, seed, n)   # row i*K: image i
        return dataclasses.replace(self, rows_train=self.views_of(images_train * self.views),
                                   rows_val=images_val * self.views)

    def tta(self, proba: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Per image of the original-view `rows`: the mean probabilities over its K views (proba: every row)."""
        return proba.reshape(-1, self.views, proba.shape[1])[np.asarray(rows) // self.views].mean(1)


def validation_split(y: np.ndarray, fraction: float, seed: int):
    """(train rows, val rows): `fraction` of the rows held out, stratified by class, reproducibly."""
    rows = np.arange(len(y))
    if fraction == 0:
        return rows, rows[:0]
    from sklearn.model_selection import train_test_split
    try:
        train, val = train_test_split(rows, test_size=fraction, stratify=y, random_state=seed)
    except ValueError as e:        # too few rows for a stratified hold-out
        raise SettingError("val_fraction", f"{fraction}: cannot hold out a stratified {fraction:.0%} of {len(y)} rows "
                           f"({str(e).splitlines()[0][:90]}); change it, or use 0", "RunOptions") from None
    return np.sort(train), np.sort(val)


def split_images(y: np.ndarray, val_fraction: float, seed: int, n: int | None = None):
    """(training images, validation images) of a train split with labels y: n of them (all by default)
    taken stratified and seeded, then val_fraction of those held out. n is the labelled budget: a head
    that refits on train + validation (the protocol) has seen exactly n images, as one that does not
    has seen n minus the validation images."""
    pool = subset(np.arange(len(y)), y, n, seed)
    train, val = validation_split(y[pool], val_fraction, seed)
    return pool[train], pool[val]


def subset(images: np.ndarray, y: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """A stratified, seeded subset of n of `images` (all of them when n is None or not smaller: said in a line
    when n was given, as the run's train_n records what was used)."""
    if n is None or n >= len(images):
        if n is not None and n > len(images):
            log.warning(f"train_images {n:,} is more than the {len(images):,} training images there are; all of them "
                        "are used")
        return images
    from sklearn.model_selection import train_test_split
    try:
        keep, _ = train_test_split(images, train_size=n, stratify=y[images], random_state=seed)
    except ValueError as e:
        raise SettingError("train_images", f"{n}: cannot take a stratified {n} of {len(images)} training images "
                           f"({str(e).splitlines()[0][:90]}); raise it", "RunOptions") from None
    return np.sort(keep)


def as_rows(X: np.ndarray) -> np.ndarray:
    """N x K x D -> N*K x D without a copy (2-D stays as it is); float16 stays float16."""
    X = X.reshape(-1, X.shape[-1]) if X.ndim == 3 else X
    return X if X.dtype == np.float16 else X.astype(np.float32, copy=False)


def load_training_data(cache_path: str, val_fraction: float, seed: int, train_images: int | None = None) -> TrainingData:
    """The cache's features as a head trains on them; train_images: use only a stratified, seeded
    subset of that many of the train split's images (a learning curve on one cache; split_images)."""
    cache = load_cache(cache_path, splits=["train", "test"])
    X, y, meta = cache["train"]
    X_test, y_test, _ = cache["test"]
    K = X.shape[1] if X.ndim == 3 else 1
    images_train, images_val = split_images(y, val_fraction, seed, train_images)
    if len(np.unique(y[images_train])) < 2:
        raise SettingError("val_fraction", f"{val_fraction}: leaves {len(images_train)} training images of "
                           f"{len(np.unique(y[images_train]))} class(es) out of {len(y)}; lower it (a head needs two "
                           "classes to train on)", "RunOptions")
    rows_train = (images_train[:, None] * K + np.arange(K)).ravel()
    prov = {k: v for k, v in meta.items() if k not in ("ids", "split")}
    return TrainingData(as_rows(X), np.repeat(y, K), rows_train, images_val * K, as_rows(X_test), np.repeat(y_test, K),
                        list(meta["class_names"]), cache_path, prov, K, verified=True)
