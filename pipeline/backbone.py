"""Mapper: the frozen VGG19 base cut at a layer, as a callable `preprocessed batch -> features`.

Keras is imported lazily, so a cache hit never pays for loading a deep-learning backend.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np

from .config import PipelineError, reason

KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
KERAS_WEIGHTS_FILE = {True: "vgg19_weights_tf_dim_ordering_tf_kernels.h5",        # with fc1/fc2
                      False: "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"}  # convolutions only
RANDOM_INIT = "glorot_uniform kernels, zero biases; numpy PCG64, weights in model order"


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


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set:
    try:
        with open(cpuinfo) as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.partition(":")[2].split())


def resolve_precision(precision: str, cuda: bool | None = None, flags: set | None = None) -> str:
    """auto = the fastest the hardware runs natively: float16 on CUDA, bfloat16 on CPUs with native
    bf16 (AVX512-BF16 or AMX), else float32. `cuda` and `flags` default to this machine's."""
    if precision != "auto":
        return precision
    if has_cuda_gpu() if cuda is None else cuda:
        return "float16"
    flags = cpu_flags() if flags is None else flags
    return "bfloat16" if {"avx512_bf16", "amx_bf16"} & flags else "float32"


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
    if weights == "random":  # drawn with NumPy (random_weights): no Keras version or backend in it
        return {"kind": "random", "seed": seed, "init": RANDOM_INIT}
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


def with_precision(keras, model, precision: str):
    """A copy of `model` computing in `precision`, its dtype policy set layer by layer: nothing
    process-wide (Keras' global policy) is read or changed, so models built later are unaffected."""
    policy = "float32" if precision == "float32" else f"mixed_{precision}"

    def clone(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": policy})
    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def build_backbone(layer: str, image_size: int, weights: str, seed: int, precision: str):
    """The frozen VGG19 cut at `layer`, computing in `precision` (a resolved dtype name)."""
    import keras
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
        if weights == "random":
            random_weights(base, seed)
        else:
            _load_weights_file(keras, base, weights, top)
    cut = keras.Model(base.input, base.get_layer(layer).output, name=f"vgg19_{layer}")
    model = with_precision(keras, cut, precision)
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
