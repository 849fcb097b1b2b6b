"""What a source gives: a `Dataset` of class names and splits; each `Split` reads any contiguous
range of its images as RGB uint8 arrays (any size), from memory or from image files."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .images import MAX_PIXELS, decode_image


@dataclass
class Split:
    """One split: labels and ids in memory; pixels read by range (from an array or from files)."""
    name: str
    labels: np.ndarray                 # int64, N
    ids: np.ndarray                    # int64 original index, or relative path (str)
    images: np.ndarray | None = None   # N x H x W x 3 uint8, for in-memory sources
    paths: list | None = None          # N file paths, for image folders
    max_pixels: int = MAX_PIXELS       # larger image files are refused before decoding

    def __len__(self):
        return len(self.labels)

    def read(self, start: int, stop: int):
        if self.images is not None:
            return self.images[start:stop]
        return [decode_image(p, self.max_pixels) for p in self.paths[start:stop]]

    def subset(self, idx) -> "Split":
        idx = np.asarray(idx, dtype=np.int64)
        return Split(self.name, self.labels[idx], self.ids[idx],
                     None if self.images is None else self.images[idx],
                     None if self.paths is None else [self.paths[i] for i in idx], self.max_pixels)


@dataclass
class Dataset:
    name: str                      # cifar10, cifar100, or imagefolder:<root name>
    class_names: list
    splits: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)   # bad images left out (on_bad_image skip)


@dataclass
class CheckedDataset(Dataset):
    """A dataset whose every image file was decoded and checked (sources.open_dataset): what the
    fingerprint hashes. `digests`: per split, each image file's pixel digest (None for in-memory arrays)."""
    digests: dict = field(default_factory=dict)


def stratified_indices(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """The first images of each class, in proportion to class size, `limit` in all; sorted."""
    n = len(labels)
    if limit is None or limit >= n:
        return np.arange(n)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * limit / n
    quota = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quota), kind="stable")[: limit - quota.sum()]:
        quota[i] += 1  # largest remainders first, ties by class order: deterministic
    keep = [np.flatnonzero(labels == c)[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(keep))
