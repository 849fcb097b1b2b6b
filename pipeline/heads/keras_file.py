"""A trained head as a native `.keras` file, written and read without importing Keras (whose
TensorFlow import costs ~7 s on a 2-core machine, more than training the head).

The head is Input -> [Normalization(mean, variance)] -> [Dropout(p)] -> Dense(C, softmax): the
notebook's head, with the feature standardisation it was trained with (if any) inside it. The
layout is what `keras.Model.save` writes for this model in Keras 3 (a zip of metadata.json,
config.json and model.weights.h5), so `keras.saving.load_model` loads it (tested).

`read_head` is how this project opens a head from a run folder, which may come from anyone: it
accepts exactly this structure and reads numbers only (JSON and HDF5 datasets), so no file can
make it run code or build anything but these layers.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import io
import json
import os
import zipfile

import h5py
import numpy as np

from ..errors import PipelineError

MEMBERS = {"metadata.json", "config.json", "model.weights.h5"}
MAX_CONFIG_BYTES = 64 << 20     # mean and variance of 25,088 features are ~1 MB of JSON


def _dtype():
    return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": None}


def _layer(class_name: str, config: dict, shape=None) -> dict:
    out = {"module": "keras.layers", "class_name": class_name, "registered_name": None,
           "config": {"name": config.pop("name"), "trainable": True, "dtype": _dtype(), **config}}
    if shape is not None:
        out["build_config"] = {"input_shape": shape}
    return out


def head_config(dim: int, n_classes: int, dropout: float | None, mean=None, variance=None,
                name: str = "softmax_head") -> dict:
    shape = [None, dim]
    layers = [{"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
               "config": {"batch_shape": shape, "dtype": "float32", "sparse": False, "ragged": False,
                          "name": "input_layer", "optional": False}}]
    if mean is not None:
        layers.append(_layer("Normalization", {"name": "standardize", "axis": [-1], "invert": False,
                                               "mean": np.asarray(mean, np.float32).tolist(),
                                               "variance": np.asarray(variance, np.float32).tolist()}, shape))
    if dropout is not None:
        layers.append(_layer("Dropout", {"name": "dropout", "rate": float(dropout), "seed": None, "noise_shape": None}))
    layers.append(_layer("Dense", {
        "name": "predictions", "units": int(n_classes), "activation": "softmax", "use_bias": True,
        "kernel_initializer": {"module": "keras.initializers", "class_name": "GlorotUniform", "config": {"seed": None},
                               "registered_name": None},
        "bias_initializer": {"module": "keras.initializers", "class_name": "Zeros", "config": {}, "registered_name": None},
        "kernel_regularizer": None, "bias_regularizer": None, "kernel_constraint": None, "bias_constraint": None},
        shape))
    return {"module": "keras", "class_name": "Sequential", "registered_name": None,
            "config": {"name": name, "trainable": True, "dtype": _dtype(), "layers": layers, "build_input_shape": shape},
            "build_config": {"input_shape": shape}, "compile_config": None}


def write_head(path: str, kernel: np.ndarray, bias: np.ndarray, dropout: float | None = None, mean=None, variance=None):
    """Write the head (kernel D x C, bias C; optional dropout rate and standardisation) to `path`."""
    dim, n_classes = kernel.shape
    weights = io.BytesIO()
    with h5py.File(weights, "w") as f:
        if mean is not None:
            f.create_group("layers/normalization/vars").attrs["name"] = "standardize"
        if dropout is not None:
            f.create_group("layers/dropout/vars").attrs["name"] = "dropout"
        v = f.create_group("layers/dense/vars")
        v.attrs["name"] = "predictions"
        v.create_dataset("0", data=np.asarray(kernel, np.float32))
        v.create_dataset("1", data=np.asarray(bias, np.float32))
        f.create_group("vars").attrs["name"] = "softmax_head"
    meta = {"keras_version": importlib.metadata.version("keras"),
            "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w") as z:
        z.writestr("metadata.json", json.dumps(meta))
        z.writestr("config.json", json.dumps(head_config(dim, n_classes, dropout, mean, variance)))
        z.writestr("model.weights.h5", weights.getvalue())
    os.replace(tmp, path)


def read_head(path: str) -> dict:
    """{kernel, bias, dropout, mean, variance} of a head file written by `write_head`; PipelineError
    (one line) for anything else. Reads JSON and numeric HDF5 datasets only: nothing is unpickled,
    deserialised into objects, or run."""
    def refuse(why):
        return PipelineError(f"head file {path}: {why}; re-run train-head to write it again")
    try:
        with zipfile.ZipFile(path) as z:
            infos = {i.filename: i for i in z.infolist()}
            if set(infos) != MEMBERS:
                raise refuse(f"holds {sorted(infos)}, expected {sorted(MEMBERS)}")
            if infos["config.json"].file_size > MAX_CONFIG_BYTES:
                raise refuse("config.json is too large")
            config = json.loads(z.read("config.json"))
            weights = z.read("model.weights.h5")
    except (OSError, zipfile.BadZipFile, ValueError, KeyError) as e:
        raise refuse(f"not a readable .keras file ({str(e)[:60]})") from None
    try:
        layers = config["config"]["layers"]
        kinds = [(layer["module"], layer["class_name"]) for layer in layers]
        ok = config["class_name"] == "Sequential" and config["module"] == "keras" and all(
            m == "keras.layers" for m, _ in kinds) and [k for _, k in kinds] in (
            ["InputLayer", "Dense"], ["InputLayer", "Dropout", "Dense"], ["InputLayer", "Normalization", "Dense"],
            ["InputLayer", "Normalization", "Dropout", "Dense"])
        if not ok or layers[-1]["config"]["activation"] != "softmax":
            raise refuse("not a head this project writes (Input, [Normalization], [Dropout], Dense softmax)")
        by_kind = {k: layer["config"] for (_, k), layer in zip(kinds, layers)}
        with h5py.File(io.BytesIO(weights), "r") as f:
            kernel = np.asarray(f["layers/dense/vars/0"][()], np.float32)
            bias = np.asarray(f["layers/dense/vars/1"][()], np.float32)
        head = {"kernel": kernel, "bias": bias, "dropout": by_kind.get("Dropout", {}).get("rate"),
                "mean": None, "variance": None}
        if "Normalization" in by_kind:
            head["mean"] = np.asarray(by_kind["Normalization"]["mean"], np.float32)
            head["variance"] = np.asarray(by_kind["Normalization"]["variance"], np.float32)
    except (KeyError, TypeError, ValueError, OSError, IndexError) as e:
        raise refuse(f"its layers or weights are not a head's ({type(e).__name__})") from None
    d, c = kernel.shape if kernel.ndim == 2 else (0, 0)
    stats_ok = head["mean"] is None or head["mean"].shape == head["variance"].shape == (d,)
    if not d or bias.shape != (c,) or not stats_ok:
        raise refuse(f"inconsistent shapes: kernel {kernel.shape}, bias {bias.shape}")
    if not (np.isfinite(kernel).all() and np.isfinite(bias).all()):
        raise refuse("its weights are not finite")
    return head


def head_model(head: dict):
    """The head as a Keras model on features (built from read_head's numbers, not deserialised)."""
    import keras
    d, c = head["kernel"].shape
    layers = [keras.Input((d,), name="features")]
    if head["mean"] is not None:
        layers.append(keras.layers.Normalization(mean=head["mean"], variance=head["variance"], name="standardize",
                                                 dtype="float32"))
    if head["dropout"] is not None:
        layers.append(keras.layers.Dropout(float(head["dropout"]), name="dropout", dtype="float32"))
    dense = keras.layers.Dense(c, activation="softmax", name="predictions", dtype="float32")
    model = keras.Sequential(layers + [dense], name="head")
    dense.set_weights([head["kernel"], head["bias"]])
    return model
