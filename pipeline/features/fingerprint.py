"""The dataset fingerprint: a hash of the exact pixels and labels that will be extracted.

Pure: it hashes what the sources decided the dataset is (image files were decoded and checked
there, each leaving its pixel digest on its split); it changes nothing.
"""
from __future__ import annotations

import hashlib

import numpy as np

from .dataset import Dataset

FINGERPRINT_VERSION = 1  # bump when what goes into the hash changes


def fingerprint(ds: Dataset) -> str:
    """SHA-256 of class names, then per split: its name, size, labels and pixels, in order."""
    h = hashlib.sha256(f"v{FINGERPRINT_VERSION}|{','.join(ds.class_names)}".encode())
    for name, split in ds.splits.items():
        if split.images is not None:
            digests = [hashlib.sha256(np.ascontiguousarray(split.images).tobytes()).digest()]
            h.update(np.array(split.images.shape, "<i8").tobytes())
        else:
            digests = split.digests
            if digests is None or len(digests) != len(split):
                raise ValueError(f"split {name}: image files not checked yet (sources.open_dataset does it)")
        h.update(f"|{name}|{len(split)}|".encode())
        h.update(split.labels.astype("<i8").tobytes())
        for d in digests:
            h.update(d)
    return h.hexdigest()
