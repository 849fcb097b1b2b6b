"""The dataset fingerprint: a hash of the exact pixels and labels that will be extracted.

Image files are decoded here once, in threads, which also finds every bad image before any
backbone work: with on_bad_image="skip" they are left out and listed, otherwise the run stops.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .config import PipelineError
from .sources import BadImage, Dataset, decode_image

FINGERPRINT_VERSION = 1  # bump when what goes into the hash changes


def _image_digest(path):
    try:
        img = decode_image(path)
    except BadImage as e:
        return e
    return hashlib.blake2b(np.array(img.shape, "<i8").tobytes() + img.tobytes(), digest_size=16).digest()


def fingerprint(ds: Dataset, on_bad_image: str = "fail") -> str:
    """Hash splits, labels and pixels in order; drops bad images in place when skipping."""
    h = hashlib.sha256(f"v{FINGERPRINT_VERSION}|{','.join(ds.class_names)}".encode())
    for name, split in ds.splits.items():
        if split.images is not None:
            digests = [hashlib.sha256(np.ascontiguousarray(split.images).tobytes()).digest()]
            h.update(np.array(split.images.shape, "<i8").tobytes())
        else:
            with ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 1)) as pool:
                digests = list(pool.map(_image_digest, split.paths))
            bad = [d for d in digests if isinstance(d, BadImage)]
            if bad and on_bad_image == "fail":
                raise PipelineError(f"bad image {bad[0].path}: {bad[0].reason}; fix or remove it, or pass "
                                    f"--on-bad-image skip ({len(bad)} bad image(s) in {name})")
            if bad:
                keep = [i for i, d in enumerate(digests) if not isinstance(d, BadImage)]
                ds.skipped += [{"split": name, "path": str(split.ids[i]), "reason": digests[i].reason}
                               for i, d in enumerate(digests) if isinstance(d, BadImage)]
                split = ds.splits[name] = split.subset(keep)
                digests = [digests[i] for i in keep]
            if not len(split):
                raise PipelineError(f"split {name}: no readable images left; check the data")
        h.update(f"|{name}|{len(split)}|".encode())
        h.update(split.labels.astype("<i8").tobytes())
        for d in digests:
            h.update(d)
    return h.hexdigest()
