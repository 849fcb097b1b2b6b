"""`python -m pipeline predict --run RUN IMAGE...`: the end-to-end classifier.

The model is the frozen VGG19 base as the run's cache built it (same layer, weights, precision),
VGG19's preprocessing as a fixed float32 layer, then the trained head. Its input is an RGB image
upscaled with OpenCV as the cache did (`pipeline.preprocess.upscale`), values 0..255.
"""
from __future__ import annotations

import json
import os
import re
import sys

import numpy as np

from .errors import PipelineError
from .features import backbone as bb
from .features import pooling as P
from .features.images import BadImage, decode_image
from .features.preprocess import upscale
from .heads.keras_file import head_model, read_head

BATCH_SIZE = 32   # images per forward pass

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # keras.applications.vgg19.preprocess_input (caffe mode)


def read_run(run: str) -> dict:
    """What predict needs from a run folder (which may come from anyone): checked, one line if not."""
    metrics_path = os.path.join(run, "metrics.json")
    if not os.path.isfile(metrics_path):
        raise PipelineError(f"--run {run}: no metrics.json; pass a folder written by train-head or sweep")
    try:
        with open(metrics_path) as f:
            metrics = json.load(f)
        settings = metrics["provenance"]["settings"]
        names = [str(n) for n in metrics["class_names"]]
        kind = str(metrics["head"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PipelineError(f"--run {run}: metrics.json is not a run's ({type(e).__name__}: {str(e)[:60]}); pass a "
                            "folder written by train-head or sweep") from None
    head_file = os.path.join(run, "head.keras")
    if not os.path.isfile(head_file):
        old = " (head.joblib is an older version's pickle: never loaded; re-run train-head)" \
            if os.path.exists(os.path.join(run, "head.joblib")) else "; re-run train-head"
        raise PipelineError(f"--run {run}: missing head.keras{old}")
    if not isinstance(settings, dict) or "image_size" not in settings:
        raise PipelineError(f"--run {run}: its cache has no backbone settings (a synthetic cache?); "
                            "predict needs a run trained on make features output")
    head = read_head(head_file)
    if head["kernel"].shape[1] != len(names):
        raise PipelineError(f"--run {run}: head.keras has {head['kernel'].shape[1]} classes but metrics.json names "
                            f"{len(names)}; re-run train-head")
    return {"metrics": metrics, "head": head, "settings": settings, "class_names": names, "kind": kind}


def end_to_end(run_info: dict):
    import keras
    s, kind = run_info["settings"], run_info["kind"]
    ident = run_info["metrics"]["provenance"].get("weights") or {}
    layers = P.parse_layers(s["layer"], s.get("pooling", P.POOLINGS[0]))
    base = bb.build_backbone(layers, s["image_size"], s["weights"], s.get("seed", 0), s["precision"],
                             sha256=ident.get("sha256"))
    # VGG19's preprocessing as a fixed 1x1 convolution in float32: RGB->BGR and minus the caffe mean,
    # exactly preprocess_input's arithmetic (one nonzero term per output).
    prep = keras.layers.Conv2D(3, 1, name="vgg19_preprocess", dtype="float32", trainable=False)
    inp = keras.Input((s["image_size"], s["image_size"], 3), name="image")
    x = P.keras_pool(keras, base(prep(inp)), layers)
    out = head_model(run_info["head"])(x)
    model = keras.Model(inp, out, name=re.sub(r"\W", "_", f"vgg19_{P.slug(layers)}_{kind}"))
    prep.set_weights([np.eye(3, dtype=np.float32)[::-1].reshape(1, 1, 3, 3), -np.array(CAFFE_MEAN_BGR, np.float32)])
    return model


def predict_images(model, run_info, paths, batch_size=32):
    """Per image: (path, class index, probability vector)."""
    s = run_info["settings"]
    out = []
    for a in range(0, len(paths), batch_size):
        chunk = paths[a:a + batch_size]
        try:
            images = [decode_image(p) for p in chunk]
        except BadImage as e:
            raise PipelineError(f"cannot read image {e.path}: {e.reason}; pass readable image files") from None
        x = upscale(images, s["image_size"], s["interpolation"]).astype(np.float32)
        proba = np.asarray(model.predict_on_batch(x), dtype=np.float64)
        out += [(p, int(pr.argmax()), pr) for p, pr in zip(chunk, proba)]
    return out


def run(run_dir: str, images: list, export: str | None = None, batch_size: int = BATCH_SIZE):
    """Print `path<TAB>class<TAB>probability` for each image; save the model to `export` (.keras)."""
    if batch_size < 1:
        raise PipelineError(f"--batch-size: expected a positive integer, got {batch_size}")
    if export is not None:
        folder = os.path.dirname(os.path.abspath(export))
        if not export.endswith(".keras") or not os.path.isdir(folder):
            raise PipelineError(f"--export {export}: expected a path ending in .keras in an existing folder")
    info = read_run(run_dir)
    missing = [p for p in images if not os.path.isfile(p)]
    if missing:
        raise PipelineError(f"image {missing[0]}: no such file; pass existing image files")
    model = end_to_end(info)
    names = info["class_names"]
    for path, k, proba in predict_images(model, info, images, batch_size):
        print(f"{path}\t{names[k]}\t{proba[k]:.4f}")
    if export:
        model.save(export)
        print(f"exported {export}: input {model.input.shape[1]}x{model.input.shape[2]} RGB 0..255 upscaled "
              f"with OpenCV {info['settings']['interpolation']}", file=sys.stderr)
