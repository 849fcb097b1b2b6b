"""Mapper: the frozen VGG19 base cut at a layer, as a callable `preprocessed batch -> features`.

Keras is imported lazily, so a cache hit never pays for loading a deep-learning backend.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import sys

import numpy as np

from .config import PipelineError, reason

KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
KERAS_WEIGHTS_FILE = {True: "vgg19_weights_tf_dim_ordering_tf_kernels.h5",        # with fc1/fc2
                      False: "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"}  # convolutions only
FEATURE_DIMS = {"fc2": 4096, "fc1": 4096}


def keras_home() -> str:
    return os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))


def keras_backend_name() -> str:
    """The backend Keras will use, read the way Keras reads it, without importing Keras."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    try:
        with open(os.path.join(keras_home(), "keras.json")) as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def has_cuda_gpu() -> bool:
    return os.path.isdir("/proc/driver/nvidia/gpus") and bool(os.listdir("/proc/driver/nvidia/gpus")) \
        and os.environ.get("CUDA_VISIBLE_DEVICES", "x") not in ("", "-1")


def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str) -> str:
    """auto = the fastest the hardware runs natively: float16 on CUDA, bfloat16 on bf16 CPUs, else float32."""
    if precision != "auto":
        return precision
    if has_cuda_gpu():
        return "float16"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def weights_identity(weights: str, seed: int, layer: str) -> dict:
    """What the weights are, cheaply, for the cache key (no Keras import, no download)."""
    if weights == "imagenet":
        return {"kind": "imagenet", "file": KERAS_WEIGHTS_FILE[layer != "block5_pool"]}
    if weights == "random":  # initialisers differ between Keras versions and backends
        return {"kind": "random", "seed": seed, "keras": importlib.metadata.version("keras"),
                "backend": keras_backend_name()}
    return {"kind": "file", "sha256": file_sha256(weights)}


def warn_random(seed: int):
    print(f"WARNING: --weights random (seed {seed}): VGG19 is NOT pretrained; these features are for "
          "offline smoke runs only, not for transfer learning", file=sys.stderr)


def _vgg19(keras, top: bool, image_size: int, weights=None):
    shape = (image_size, image_size, 3)
    if not top or image_size == 224:
        return keras.applications.VGG19(weights=weights, include_top=top, input_shape=shape)
    # fc1/fc2 at another size (random weights only): the same layers, on a different flatten size
    base = keras.applications.VGG19(weights=None, include_top=False, input_shape=shape)
    x = keras.layers.Flatten(name="flatten")(base.output)
    x = keras.layers.Dense(4096, activation="relu", name="fc1")(x)
    x = keras.layers.Dense(4096, activation="relu", name="fc2")(x)
    return keras.Model(base.input, x, name="vgg19")


def _load_weights_file(keras, model, path: str, top: bool):
    try:
        model.load_weights(path)
        return
    except Exception as first:  # noqa: BLE001 - Keras raises many types for a file that does not fit
        error = first
    if not top:  # a with-top file still fits the convolutions: load it whole, then copy them over
        try:
            full = keras.applications.VGG19(weights=None, include_top=True)
            full.load_weights(path)
            for layer in model.layers:
                layer.set_weights(full.get_layer(layer.name).get_weights())
            return
        except Exception:  # noqa: BLE001
            pass
    raise PipelineError(f"--weights {path}: does not fit VGG19 ({reason(error, 160)}); pass Keras' "
                        f"{KERAS_WEIGHTS_FILE[top]} or a file saved from keras.applications.VGG19") from None


def build_backbone(layer: str, image_size: int, weights: str, seed: int, precision: str):
    """The frozen VGG19 cut at `layer`, computing in `precision` (a resolved dtype name)."""
    import keras
    keras.mixed_precision.set_global_policy("float32" if precision == "float32" else f"mixed_{precision}")
    keras.utils.set_random_seed(seed)
    top = layer != "block5_pool"
    if weights == "imagenet":
        try:
            base = _vgg19(keras, top, image_size, weights="imagenet")
        except Exception as e:  # noqa: BLE001 - download failures surface as several types
            target = os.path.join(keras_home(), "models", KERAS_WEIGHTS_FILE[top])
            raise PipelineError(
                f"could not fetch the ImageNet VGG19 weights ({reason(e)}); put "
                f"{KERAS_WEIGHTS_FILE[top]} (from {KERAS_WEIGHTS_URL}) at {target}, or pass --weights PATH "
                "(or --weights random for an offline smoke run)") from None
    else:
        base = _vgg19(keras, top, image_size)
        if weights != "random":
            _load_weights_file(keras, base, weights, top)
    model = keras.Model(base.input, base.get_layer(layer).output, name=f"vgg19_{layer}")
    model.trainable = False
    return model


def weights_sha256(model) -> str:
    """SHA-256 of the weights as loaded (the file's own hash is recorded too, where there is one)."""
    h = hashlib.sha256()
    for w in model.weights:
        h.update(np.ascontiguousarray(np.asarray(w.numpy() if hasattr(w, "numpy") else w)).tobytes())
    return h.hexdigest()


def imagenet_file_sha256(layer: str) -> str | None:
    path = os.path.join(keras_home(), "models", KERAS_WEIGHTS_FILE[layer != "block5_pool"])
    return file_sha256(path) if os.path.exists(path) else None


class Backbone:
    """Callable mapper: float32 preprocessed N x S x S x 3 -> N x D features in `store_dtype`."""

    def __init__(self, model, store_dtype: str):
        self.model, self.store_dtype = model, store_dtype

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = self.model.predict_on_batch(batch)
        out = np.asarray(out.numpy() if hasattr(out, "numpy") else out)
        return out.reshape(len(batch), -1).astype(self.store_dtype)
