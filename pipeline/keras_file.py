"""Write the notebook's head, Input -> Dropout(p) -> Dense(C, softmax), as a native `.keras` file
without importing Keras (whose TensorFlow import costs ~7 s on a 2-core machine, more than
training the head). The layout is what `keras.Model.save` writes for this model in Keras 3: a zip
of metadata.json, config.json and model.weights.h5; tests load it with `keras.saving.load_model`.
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


def _dtype():
    return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": None}


def head_config(dim: int, n_classes: int, dropout: float, name: str = "softmax_head") -> dict:
    shape = [None, dim]
    layers = [
        {"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
         "config": {"batch_shape": shape, "dtype": "float32", "sparse": False, "ragged": False,
                    "name": "input_layer", "optional": False}},
        {"module": "keras.layers", "class_name": "Dropout", "registered_name": None,
         "config": {"name": "dropout", "trainable": True, "dtype": _dtype(), "rate": float(dropout), "seed": None,
                    "noise_shape": None}},
        {"module": "keras.layers", "class_name": "Dense", "registered_name": None, "build_config": {"input_shape": shape},
         "config": {"name": "predictions", "trainable": True, "dtype": _dtype(), "units": int(n_classes),
                    "activation": "softmax", "use_bias": True,
                    "kernel_initializer": {"module": "keras.initializers", "class_name": "GlorotUniform",
                                           "config": {"seed": None}, "registered_name": None},
                    "bias_initializer": {"module": "keras.initializers", "class_name": "Zeros", "config": {},
                                         "registered_name": None},
                    "kernel_regularizer": None, "bias_regularizer": None, "kernel_constraint": None,
                    "bias_constraint": None}}]
    return {"module": "keras", "class_name": "Sequential", "registered_name": None,
            "config": {"name": name, "trainable": True, "dtype": _dtype(), "layers": layers, "build_input_shape": shape},
            "build_config": {"input_shape": shape}, "compile_config": None}


def write_softmax_head(path: str, kernel: np.ndarray, bias: np.ndarray, dropout: float):
    dim, n_classes = kernel.shape
    weights = io.BytesIO()
    with h5py.File(weights, "w") as f:
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
        z.writestr("config.json", json.dumps(head_config(dim, n_classes, dropout)))
        z.writestr("model.weights.h5", weights.getvalue())
    os.replace(tmp, path)
