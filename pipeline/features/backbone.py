"""Mapper: the frozen VGG19 with an output at each layer asked for (one forward pass for all of
them), fed uint8 pixels and pooling inside the model (pooling.py), as a callable `upscaled batch ->
features` that concatenates the pooled parts of each layer spec.

Keras is imported lazily, so a cache hit never pays for loading a deep-learning backend.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import PipelineError, SettingError, backend_reason, reason
from . import pooling
from .precision import policy_name, requested_as
from .preprocess import keras_preprocessing
from .weights import KERAS_WEIGHTS_FILE, file_sha256, random_weights, weights_file


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
    raise SettingError("weights", f"{path}: does not fit VGG19 ({reason(error, 160)}); pass Keras' "
                       f"{KERAS_WEIGHTS_FILE[top]} or a file saved from keras.applications.VGG19", "FeatureConfig") from None


def with_precision(keras, model, precision: str):
    """A copy of `model` computing in `precision`, its dtype policy set layer by layer: nothing
    process-wide (Keras' global policy) is read or changed, so models built later are unaffected."""
    policy = policy_name(precision)

    def clone(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": policy})
    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def build_backbone(layers, image_size: int, weights: str, seed: int, precision: str, sha256: str | None = None):
    """The frozen VGG19 with one output per layer named in `layers` (a parsed spec: [(layer, pooling)],
    see pooling.py), a dict {layer: tensor}, computing in `precision` (a resolved dtype name), on the
    preprocessed float32 batch (`fed_pixels` puts the preprocessing inside). `sha256`: what the
    weights file must hash to (the run's key was made from it)."""
    import keras
    top = pooling.needs_top(layers)
    path = weights_file(weights, top)
    if path is not None and not os.path.isfile(path):
        raise SettingError("weights", f"{path}: the weights file is gone; restore it, or pass other weights",
                           "FeatureConfig")
    if path is not None and sha256 is not None and file_sha256(path) != sha256:
        raise PipelineError(f"weights file {path} changed since the cache was keyed (SHA-256 differs); restore "
                            "it, or extract the features again (and train the head again) with the new file")
    if weights == "imagenet":
        base = _vgg19(keras, top, image_size, weights=path)
    else:
        base = _vgg19(keras, top, image_size)
        if weights == "random":
            random_weights(base, seed)
        else:
            _load_weights_file(keras, base, weights, top)
    names = list(dict.fromkeys(name for name, _ in layers))
    cut = keras.Model(base.input, {n: base.get_layer(n).output for n in names}, name="vgg19_" + "_".join(names))
    model = with_precision(keras, cut, precision)
    model.trainable = False
    return model


def fed_pixels(model, layers: list):
    """`model` (build_backbone's) taking the upscaled uint8 RGB images instead, and giving the pooled
    features of `layers` (a parsed spec) part by part, {part_name: N x d float32} (pooling.keras_parts):
    VGG19's preprocessing and the pooling run inside, in float32 (keras_preprocessing), so the host sends
    a quarter of the bytes, does no per-pixel arithmetic, and gets back only the features."""
    import keras
    inp = keras.Input(tuple(model.input.shape[1:]), dtype="uint8", name="pixels")
    fed = keras.Model(inp, pooling.keras_parts(keras, model(keras_preprocessing(keras, inp)), layers),
                      name=model.name + "_pixels")
    fed.trainable = False
    return fed


def first_batch(model, x, precision: str, who: str, remedy: str):
    """model.predict_on_batch(x) for a pass's first batch. Where it fails in a precision other than float32, one
    line: the backend may not run that dtype here (TensorFlow with oneDNN held to AVX2, ONEDNN_MAX_CPU_ISA=AVX2, has
    no bfloat16 convolutions), its own reason, and `remedy`; float32's failures (nothing to fall back to) as they are."""
    try:
        return model.predict_on_batch(x)
    except Exception as e:  # noqa: BLE001 - each backend raises its own types for a kernel it lacks
        if requested_as(precision) == "float32":
            raise
        raise PipelineError(f"{who}: the backbone failed on its first batch computing in {precision} ({type(e).__name__}: "
                            f"{backend_reason(e)}); where the backend cannot run that dtype here, {remedy}") from None


class Backbone:
    """Callable mapper: upscaled uint8 images -> features, for one or several layer specs at once
    (`outputs`: [(parsed layers, store dtype)]), from one forward pass per view of `model` (fed_pixels',
    holding every part the specs name).
    A batch is N x S x S x 3 (-> N x D each) or K x N x S x S x 3 for K views (-> N x K x D each).
    `batch_size`: a split's last, shorter batch is padded to it (the padding's rows are dropped), so the
    compiled forward pass sees one shape: a new shape is a new trace (TensorFlow) or compilation (JAX, XLA
    on a GPU: seconds each)."""

    def __init__(self, model, outputs: list, batch_size: int | None = None, precision: str = "float32"):
        self.model, self.outputs, self.batch_size, self.precision = model, outputs, batch_size, precision
        self.ran = False            # a batch went through: a later failure is not the precision's

    def _predict(self, x: np.ndarray) -> dict:
        if self.ran:
            return self.model.predict_on_batch(x)
        parts = first_batch(self.model, x, self.precision, "features",
                            "use --precision auto (it measures what runs) or float32")
        self.ran = True
        return parts

    def _one(self, x: np.ndarray) -> list:
        n = len(x)
        if self.batch_size and n < self.batch_size:
            x = np.concatenate([x, np.zeros((self.batch_size - n, *x.shape[1:]), x.dtype)])
        parts = self._predict(x)
        parts = {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v)[:n] for k, v in parts.items()}
        return [np.concatenate([parts[pooling.part_name(*part)] for part in layers], 1, dtype=dtype)     # one copy
                for layers, dtype in self.outputs]

    def __call__(self, batch: np.ndarray) -> list:
        if batch.ndim == 4:
            return self._one(batch)
        per_view = [self._one(x) for x in batch]
        return [np.stack([v[j] for v in per_view], axis=1) for j in range(len(self.outputs))]
