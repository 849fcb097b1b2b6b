"""Which VGG19 weights a run uses, as the cache key sees them: Keras' ImageNet file (fetched through
Keras' own downloader, MD5-checked as Keras checks it), a weights file, or seeded random weights.

A file's identity is its SHA-256 (hashing.file_sha256: hashed once, remembered by path, size, mtime,
ctime and inode), so another file under the same name is never a cache hit.
"""
from __future__ import annotations

import hashlib
import logging
import os

import numpy as np

from ..errors import PipelineError, reason
from ..hashing import file_sha256
from ..keras_env import keras_home

log = logging.getLogger(__name__)

KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
KERAS_WEIGHTS_FILE = {True: "vgg19_weights_tf_dim_ordering_tf_kernels.h5",        # with fc1/fc2
                      False: "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"}  # convolutions only
KERAS_WEIGHTS_MD5 = {True: "cbe5617147190e668d6c5d5026f83318", False: "253f8cb515780f3b799900260a226db6"}
RANDOM_INIT = "glorot_uniform kernels, zero biases; numpy PCG64, weights in model order"


def imagenet_file(top: bool) -> str:
    """Keras' ImageNet VGG19 weights file (with or without fc1/fc2), downloaded as Keras does if missing."""
    name = KERAS_WEIGHTS_FILE[top]
    path = os.path.join(keras_home(), "models", name)
    if os.path.isfile(path):
        return path
    import keras
    try:
        return keras.utils.get_file(name, KERAS_WEIGHTS_URL + name, cache_subdir="models", file_hash=KERAS_WEIGHTS_MD5[top])
    except Exception as e:  # noqa: BLE001 - download failures surface as several types
        raise PipelineError(f"could not fetch the ImageNet VGG19 weights ({reason(e)}); put {name} (from "
                            f"{KERAS_WEIGHTS_URL}) at {path}, or pass weights=PATH (or weights=random for an "
                            "offline smoke run)") from None


def weights_file(weights: str, top: bool) -> str | None:
    """The file the weights come from (None for random)."""
    return imagenet_file(top) if weights == "imagenet" else None if weights == "random" else weights


def weights_identity(weights: str, seed: int, top: bool, memo_dir: str | None = None) -> dict:
    """What the weights are, for the cache key: a file's SHA-256, or how random weights are drawn."""
    if weights == "random":  # drawn with NumPy (random_weights): no Keras version or backend in it
        return {"kind": "random", "seed": seed, "init": RANDOM_INIT}
    sha = file_sha256(weights_file(weights, top), memo_dir)
    return {"kind": "imagenet", "file": KERAS_WEIGHTS_FILE[top], "sha256": sha} if weights == "imagenet" \
        else {"kind": "file", "sha256": sha}


def random_weights(model, seed: int):
    """Dense's and Conv2D's default initialisation (Glorot-uniform kernels, zero biases) drawn with
    NumPy from `seed`: the same numbers whatever the Keras version or backend, and no global seed."""
    rng = np.random.Generator(np.random.PCG64(seed))
    out = []
    for w in model.weights:
        shape = tuple(w.shape)
        if len(shape) < 2:
            out.append(np.zeros(shape, np.float32))
            continue
        field = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        limit = np.sqrt(6.0 / (field * (shape[-2] + shape[-1])))
        u = rng.random(shape, dtype=np.float32)
        out.append((u * np.float32(2 * limit) - np.float32(limit)).astype(np.float32))
    model.set_weights(out)


def model_weights_sha256(model) -> str:
    """SHA-256 of a model's weights as loaded (random weights have no file to hash)."""
    h = hashlib.sha256()
    for w in model.weights:
        h.update(np.ascontiguousarray(np.asarray(w.numpy() if hasattr(w, "numpy") else w)).tobytes())
    return h.hexdigest()


def warn_random(seed: int):
    log.warning(f"WARNING: --weights random (seed {seed}): VGG19 is NOT pretrained; these features are for "
                "offline smoke runs only, not for transfer learning")
