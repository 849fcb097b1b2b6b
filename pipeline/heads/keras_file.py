"""A trained head as a native `.keras` file, written and read without importing Keras (whose
TensorFlow import costs ~7 s on a 2-core machine, more than training the head).

The head is Input -> [BlockNormalization(blocks, mode)] -> [Normalization(mean, variance)] ->
[Dropout(p)] -> [Dense(H, relu) -> Dropout(p)] -> Dense(C, softmax): the notebook's head (with a hidden layer), with the normalize step and the feature
standardisation it was trained with (if any) inside it. BlockNormalization is this project's one
layer of its own (layers.py: registered, so load_model finds it once pipeline.heads.layers is imported). The
layout is what `keras.Model.save` writes for this model in Keras 3 (a zip of metadata.json,
config.json and model.weights.h5), so `keras.saving.load_model` loads it (tested).

`read_head` is how this project opens a head from a run folder, which may come from anyone: it
accepts exactly this structure and reads numbers only (JSON and HDF5 datasets), so no file can
make it run code or build anything but these layers; the file itself is the folder's own (durable.open_own),
read once into memory, and where its run recorded the file's SHA-256 (run_files.recorded_sha256) those very
bytes must have it: a head changed after its run wrote it is never used.
"""
from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import io
import json
import zipfile

import h5py
import numpy as np

from ..durable import atomic_file, open_own
from ..errors import PipelineError
from ..hdf5_layout import READ_ERRORS, LayoutError, check_tree

# what a head file may hold, each member's cap: the config's mean and variance of 27,136 features are
# ~0.7 MB of JSON; a kernel of 200,704 features x 100 classes is 80 MB
MEMBER_BYTES = {"metadata.json": 1 << 20, "config.json": 16 << 20, "model.weights.h5": 256 << 20}
MAX_EXPANSION = 50              # a member may expand at most this many times (plus 1 MB): zip bombs
MAX_KERNEL_VALUES = 64 << 20    # D x C of the Dense kernel (256 MB of float32)
WEIGHTS = {"layers/dense/vars/0": 2, "layers/dense/vars/1": 1}   # dataset -> rank: nothing else is read
HIDDEN_WEIGHTS = {"layers/dense/vars/0": 2, "layers/dense/vars/1": 1,          # with a hidden layer: Keras names
                  "layers/dense_1/vars/0": 2, "layers/dense_1/vars/1": 1}      # a model's second Dense dense_1
PLAIN_LAYERS = (["Dense"], ["Dropout", "Dense"], ["Normalization", "Dense"], ["Normalization", "Dropout", "Dense"],
                ["Dropout", "Dense", "Dropout", "Dense"], ["Normalization", "Dropout", "Dense", "Dropout", "Dense"])
MAX_BLOCKS = 64                 # layer blocks of a normalize step
BLOCK_LAYER = {"module": "pipeline.heads.layers", "class_name": "BlockNormalization",
               "registered_name": "pipeline>BlockNormalization"}


def _dtype():
    return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": None}


def _layer(class_name: str, config: dict, shape=None) -> dict:
    out = {"module": "keras.layers", "class_name": class_name, "registered_name": None,
           "config": {"name": config.pop("name"), "trainable": True, "dtype": _dtype(), **config}}
    if shape is not None:
        out["build_config"] = {"input_shape": shape}
    return out


def _dense(name: str, units: int, activation: str, shape) -> dict:
    return _layer("Dense", {
        "name": name, "units": int(units), "activation": activation, "use_bias": True,
        "kernel_initializer": {"module": "keras.initializers", "class_name": "GlorotUniform", "config": {"seed": None},
                               "registered_name": None},
        "bias_initializer": {"module": "keras.initializers", "class_name": "Zeros", "config": {}, "registered_name": None},
        "kernel_regularizer": None, "bias_regularizer": None, "kernel_constraint": None, "bias_constraint": None},
        shape)


def head_config(dim: int, n_classes: int, dropout: float | None, mean=None, variance=None,
                name: str = "softmax_head", normalize: str | None = None, blocks=None, hidden: int = 0) -> dict:
    shape = [None, dim]
    layers = [{"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
               "config": {"batch_shape": shape, "dtype": "float32", "sparse": False, "ragged": False,
                          "name": "input_layer", "optional": False}}]
    if normalize is not None:
        layers.append({**BLOCK_LAYER, "config": {"name": "normalize_blocks", "trainable": True, "dtype": _dtype(),
                                                 "blocks": [int(b) for b in blocks], "mode": normalize},
                       "build_config": {"input_shape": shape}})
    if mean is not None:
        layers.append(_layer("Normalization", {"name": "standardize", "axis": [-1], "invert": False,
                                               "mean": np.asarray(mean, np.float32).tolist(),
                                               "variance": np.asarray(variance, np.float32).tolist()}, shape))
    if dropout is not None:
        layers.append(_layer("Dropout", {"name": "dropout", "rate": float(dropout), "seed": None, "noise_shape": None}))
    if hidden:
        layers.append(_dense("hidden", hidden, "relu", shape))
        layers.append(_layer("Dropout", {"name": "hidden_dropout", "rate": float(dropout), "seed": None,
                                         "noise_shape": None}))
        shape = [None, int(hidden)]
    layers.append(_dense("predictions", n_classes, "softmax", shape))
    return {"module": "keras", "class_name": "Sequential", "registered_name": None,
            "config": {"name": name, "trainable": True, "dtype": _dtype(), "layers": layers, "build_input_shape": shape},
            "build_config": {"input_shape": shape}, "compile_config": None}


def write_head(path: str, kernel: np.ndarray, bias: np.ndarray, dropout: float | None = None, mean=None, variance=None,
               normalize: str | None = None, blocks=None, hidden_kernel=None, hidden_bias=None):
    """Write the head (kernel D x C, bias C; optional normalize step over layer blocks, dropout rate,
    standardisation, and hidden layer: hidden_kernel D x H, hidden_bias H, kernel then H x C) to `path`."""
    hidden = 0 if hidden_kernel is None else hidden_kernel.shape[1]
    if hidden and dropout is None:
        raise ValueError("a hidden layer comes with its dropout rate")
    dim, n_classes = kernel.shape if not hidden else (hidden_kernel.shape[0], kernel.shape[1])
    weights = io.BytesIO()
    with h5py.File(weights, "w") as f:
        if normalize is not None:
            f.create_group("layers/block_normalization/vars").attrs["name"] = "normalize_blocks"
        if mean is not None:
            f.create_group("layers/normalization/vars").attrs["name"] = "standardize"
        if dropout is not None:
            f.create_group("layers/dropout/vars").attrs["name"] = "dropout"
        dense = [("hidden", hidden_kernel, hidden_bias)] if hidden else []
        for i, (name, k, b) in enumerate(dense + [("predictions", kernel, bias)]):
            v = f.create_group(f"layers/dense{'_1' if i else ''}/vars")
            v.attrs["name"] = name
            v.create_dataset("0", data=np.asarray(k, np.float32))
            v.create_dataset("1", data=np.asarray(b, np.float32))
        if hidden:
            f.create_group("layers/dropout_1/vars").attrs["name"] = "hidden_dropout"
        f.create_group("vars").attrs["name"] = "softmax_head"
    meta = {"keras_version": importlib.metadata.version("keras"),
            "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}
    with atomic_file(path) as tmp, zipfile.ZipFile(tmp, "w") as z:
        z.writestr("metadata.json", json.dumps(meta))
        z.writestr("config.json", json.dumps(head_config(dim, n_classes, dropout, mean, variance,
                                                         normalize=normalize, blocks=blocks, hidden=hidden)))
        z.writestr("model.weights.h5", weights.getvalue())


def read_head(path: str, sha256: str | None = None) -> dict:
    """{kernel, bias, dropout, mean, variance, normalize, blocks, hidden_kernel, hidden_bias} of a head file written by `write_head`; PipelineError
    (one line) for anything else. Reads JSON and numeric HDF5 datasets only: nothing is unpickled,
    deserialised into objects, or run. Every size is checked before it is read: members against
    their caps and expansion, datasets against the weights file (no external, virtual or linked data).
    sha256: what the file's bytes hash to when it is as its run wrote it (None: a run that recorded none)."""
    def refuse(why):
        return PipelineError(f"head file {path}: {why}; re-run train-head to write it again")
    cap = sum(MEMBER_BYTES.values()) + (1 << 20)
    try:
        with open_own(path, refuse, cap) as f:
            data = f.read(cap + 1)
        if len(data) > cap:
            raise refuse(f"it grew past {cap:,} bytes while it was read")
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise refuse("it changed after its run wrote it (its SHA-256 is not the one metrics.json records)")
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = {i.filename: i for i in z.infolist()}
            if set(infos) != set(MEMBER_BYTES):
                raise refuse(f"holds {sorted(infos)[:5]}, expected {sorted(MEMBER_BYTES)}")
            for name, cap in MEMBER_BYTES.items():
                i = infos[name]
                if i.file_size > cap or i.file_size > MAX_EXPANSION * i.compress_size + (1 << 20):
                    raise refuse(f"{name} declares {i.file_size:,} bytes ({i.compress_size:,} stored); at most "
                                 f"{cap:,}, expanding at most {MAX_EXPANSION}x")
            config = json.loads(z.read("config.json"))
            weights = z.read("model.weights.h5")
    except RecursionError:
        raise refuse("config.json is nested too deeply") from None
    except (OSError, zipfile.BadZipFile, ValueError, KeyError, NotImplementedError, EOFError) as e:
        raise refuse(f"not a readable .keras file ({str(e)[:60]})") from None
    try:
        layers = config["config"]["layers"]
        kinds = [(layer["module"], layer["class_name"]) for layer in layers]
        blocked = len(layers) > 1 and {k: layers[1][k] for k in BLOCK_LAYER} == BLOCK_LAYER
        plain = [k for m, k in kinds[1 + blocked:] if m == "keras.layers"]
        ok = config["class_name"] == "Sequential" and config["module"] == "keras" and kinds[0] == (
            "keras.layers", "InputLayer") and len(plain) == len(kinds) - 1 - blocked and plain in PLAIN_LAYERS
        hidden = plain.count("Dense") == 2
        configs = [layer["config"] for layer in layers]
        dropouts = [c["rate"] for (_, k), c in zip(kinds, configs) if k == "Dropout"]
        if not ok or configs[-1]["activation"] != "softmax" or hidden and (
                configs[-3]["activation"] != "relu" or dropouts[0] != dropouts[1]):
            raise refuse("not a head this project writes (Input, [BlockNormalization], [Normalization], [Dropout], "
                         "[Dense relu, the same Dropout], Dense softmax)")
        by_kind = {k: c for (_, k), c in zip(kinds, configs)}
        dense = _read_weights(weights, HIDDEN_WEIGHTS if hidden else WEIGHTS)
        kernel, bias = dense[-1]
        head = {"kernel": kernel, "bias": bias, "dropout": dropouts[0] if dropouts else None,
                "mean": None, "variance": None, "normalize": None, "blocks": None,
                "hidden_kernel": dense[0][0] if hidden else None, "hidden_bias": dense[0][1] if hidden else None}
        if blocked:
            head["normalize"], head["blocks"] = _normalize_step(by_kind["BlockNormalization"], input_width(head), refuse)
        if "Normalization" in by_kind:
            head["mean"] = np.asarray(by_kind["Normalization"]["mean"], np.float32)
            head["variance"] = np.asarray(by_kind["Normalization"]["variance"], np.float32)
    except LayoutError as e:
        raise refuse(f"model.weights.h5 refused: {e}") from None
    except (*READ_ERRORS, IndexError, AttributeError) as e:
        raise refuse(f"its layers or weights are not a head's ({type(e).__name__})") from None
    d, c = input_width(head), kernel.shape[1]
    stats_ok = head["mean"] is None or head["mean"].shape == head["variance"].shape == (d,)
    w1, b1 = head["hidden_kernel"], head["hidden_bias"]
    hidden_ok = w1 is None or (w1.shape[1] == kernel.shape[0] and b1.shape == (w1.shape[1],))
    if not d or not c or bias.shape != (c,) or not stats_ok or not hidden_ok:
        raise refuse(f"inconsistent shapes: kernel {kernel.shape}, bias {bias.shape}"
                     + ("" if w1 is None else f", hidden kernel {w1.shape}, hidden bias {b1.shape}"))
    if not all(np.isfinite(a).all() for a in (kernel, bias, w1, b1) if a is not None):
        raise refuse("its weights are not finite")
    if head["mean"] is not None and not (np.isfinite(head["mean"]).all() and np.isfinite(head["variance"]).all()
                                         and (head["variance"] >= 0).all()):
        raise refuse("its standardisation has a non-finite mean or a negative or non-finite variance")
    rate = head["dropout"]
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1):
        raise refuse(f"its dropout rate is {rate!r}, expected a number in [0, 1)")
    return head


def _normalize_step(config: dict, dim: int, refuse) -> tuple[str, list]:
    """(mode, blocks) of a BlockNormalization layer's config, checked: a known mode, at most MAX_BLOCKS
    positive integer widths adding up to the head's features."""
    mode, blocks = config["mode"], config["blocks"]
    if mode not in ("l2", "sqrt-l2"):
        raise refuse(f"its normalize step's mode is {str(mode)[:20]!r}, expected l2 or sqrt-l2")
    if not isinstance(blocks, list) or not 0 < len(blocks) <= MAX_BLOCKS or not all(
            isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in blocks) or sum(blocks) != dim:
        raise refuse(f"its normalize step's blocks are not at most {MAX_BLOCKS} positive widths adding up to {dim}")
    return mode, blocks


def input_width(head: dict) -> int:
    """How many features a head read by read_head takes."""
    return (head["kernel"] if head.get("hidden_kernel") is None else head["hidden_kernel"]).shape[0]


def _read_weights(weights: bytes, expected: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each Dense layer's (kernel, bias) from model.weights.h5's bytes, in order, the layout (`expected`:
    dataset -> rank, nothing else) checked first."""
    with h5py.File(io.BytesIO(weights), "r") as f:
        datasets = check_tree(f, len(weights))
        extra = set(datasets) - set(expected)
        if extra or len(datasets) != len(expected):
            raise LayoutError(f"holds datasets {sorted(datasets)[:4]}, expected {sorted(expected)}")
        for name, rank in expected.items():
            ds = datasets[name]
            if ds.dtype.kind != "f" or ds.ndim != rank or np.prod(ds.shape, dtype=np.float64) > MAX_KERNEL_VALUES:
                raise LayoutError(f"{name} is {ds.dtype} {ds.shape}, expected a float array of rank {rank} with at "
                                  f"most {MAX_KERNEL_VALUES:,} values")
        names = list(expected)
        return [(np.asarray(datasets[k][()], np.float32), np.asarray(datasets[b][()], np.float32))
                for k, b in zip(names[::2], names[1::2])]


def head_model(head: dict, name: str = "head"):
    """The head as a Keras model on features (built from read_head's numbers, not deserialised)."""
    import keras
    d, c = input_width(head), head["kernel"].shape[1]
    layers = [keras.Input((d,), name="features")]
    if head.get("normalize"):
        from .layers import BlockNormalization
        layers.append(BlockNormalization(head["blocks"], head["normalize"], name="normalize_blocks", dtype="float32"))
    if head["mean"] is not None:
        layers.append(keras.layers.Normalization(mean=head["mean"], variance=head["variance"], name="standardize",
                                                 dtype="float32"))
    if head["dropout"] is not None:
        layers.append(keras.layers.Dropout(float(head["dropout"]), name="dropout", dtype="float32"))
    hidden = None
    if head.get("hidden_kernel") is not None:
        hidden = keras.layers.Dense(head["hidden_kernel"].shape[1], activation="relu", name="hidden", dtype="float32")
        layers += [hidden, keras.layers.Dropout(float(head["dropout"]), name="hidden_dropout", dtype="float32")]
    dense = keras.layers.Dense(c, activation="softmax", name="predictions", dtype="float32")
    model = keras.Sequential(layers + [dense], name=name)
    if hidden is not None:
        hidden.set_weights([head["hidden_kernel"], head["hidden_bias"]])
    dense.set_weights([head["kernel"], head["bias"]])
    return model
