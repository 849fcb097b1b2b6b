"""The dataset fingerprint: a hash of the exact pixels and labels that will be extracted.

Pure: it hashes a `CheckedDataset`, what the sources decided the dataset is (its image files
decoded and checked there, their pixel digests kept with it); it changes nothing.
"""
from __future__ import annotations

import hashlib

import numpy as np

from .dataset import CheckedDataset

FINGERPRINT_VERSION = 1  # bump when what goes into the hash changes


def fingerprint(ds: CheckedDataset) -> str:
    """SHA-256 of class names, then per split: its name, size, labels and pixels, in order."""
    if not isinstance(ds, CheckedDataset):
        raise TypeError(f"fingerprint: expected a CheckedDataset (sources.open_dataset), got {type(ds).__name__}")
    h = hashlib.sha256(f"v{FINGERPRINT_VERSION}|{','.join(ds.class_names)}".encode())
    for name, split in ds.splits.items():
        if split.images is not None:
            digests = [hashlib.sha256(np.ascontiguousarray(split.images).tobytes()).digest()]
            h.update(np.array(split.images.shape, "<i8").tobytes())
        else:
            digests = ds.digests.get(name)
            if digests is None or len(digests) != len(split):
                raise ValueError(f"split {name}: image files not checked yet (sources.open_dataset does it)")
        h.update(f"|{name}|{len(split)}|".encode())
        h.update(split.labels.astype("<i8").tobytes())
        for d in digests:
            h.update(d)
    return h.hexdigest()
