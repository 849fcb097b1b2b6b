"""`python -m pipeline predict --run RUN IMAGE...`: the end-to-end classifier.

The model is the frozen VGG19 base as the run's cache built it (same layer, weights, precision),
VGG19's preprocessing as a fixed float32 layer, then the trained head. Its input is an RGB image
upscaled with OpenCV as the cache did (`pipeline.preprocess.upscale`), values 0..255.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from . import backbone as bb
from .config import PipelineError
from .preprocess import upscale
from .sources import BadImage, decode_image

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # keras.applications.vgg19.preprocess_input (caffe mode)


def add_arguments(p):
    p.add_argument("--run", required=True, help="a run folder written by train-head or sweep")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--export", default=None, metavar="PATH.keras", help="also save the end-to-end model")
    p.add_argument("--batch-size", type=int, default=32)


def read_run(run: str) -> dict:
    metrics_path = os.path.join(run, "metrics.json")
    if not os.path.isfile(metrics_path):
        raise PipelineError(f"--run {run}: no metrics.json; pass a folder written by train-head or sweep")
    with open(metrics_path) as f:
        metrics = json.load(f)
    head_file = os.path.join(run, "head.keras" if metrics["head"] == "softmax" else "head.joblib")
    if not os.path.isfile(head_file):
        raise PipelineError(f"--run {run}: missing {os.path.basename(head_file)}; re-run train-head")
    settings = metrics.get("provenance", {}).get("settings", {})
    if "image_size" not in settings:
        raise PipelineError(f"--run {run}: its cache has no backbone settings (a synthetic cache?); "
                            "predict needs a run trained on make features output")
    return {"metrics": metrics, "head_file": head_file, "settings": settings}


def head_as_keras(kind: str, head_file: str):
    """The trained head as a Keras model on features: the saved softmax head, or logreg as Dense."""
    import keras
    if kind == "softmax":
        return keras.saving.load_model(head_file)
    import joblib
    pipe = joblib.load(head_file)
    scaler, lr = pipe[0], pipe[-1]
    coef = lr.coef_ / scaler.scale_                      # standardisation folded into the linear map
    bias = lr.intercept_ - coef @ scaler.mean_
    if coef.shape[0] == 1:                               # binary: softmax([-z/2, z/2]) == sigmoid(z)
        coef, bias = np.vstack([-coef / 2, coef / 2]), np.array([-bias[0] / 2, bias[0] / 2])
    dense = keras.layers.Dense(coef.shape[0], activation="softmax", name="predictions", dtype="float32")
    head = keras.Sequential([keras.Input((coef.shape[1],)), dense], name="logreg_head")
    dense.set_weights([coef.T.astype(np.float32), bias.astype(np.float32)])
    return head


def end_to_end(run_info: dict):
    import keras
    s, kind = run_info["settings"], run_info["metrics"]["head"]
    ident = run_info["metrics"].get("provenance", {}).get("weights", {})
    if ident.get("kind") == "file" and not os.path.isfile(s["weights"]):
        raise PipelineError(f"--weights file {s['weights']} of this run's cache is gone; restore it to predict")
    if ident.get("kind") == "file" and bb.file_sha256(s["weights"]) != ident.get("sha256"):
        raise PipelineError(f"--weights file {s['weights']} changed since the cache was built (SHA-256 differs); "
                            "restore it or rebuild the cache and head")
    base = bb.build_backbone(s["layer"], s["image_size"], s["weights"], s.get("seed", 0), s["precision"])
    # VGG19's preprocessing as a fixed 1x1 convolution in float32: RGB->BGR and minus the caffe mean,
    # exactly preprocess_input's arithmetic (one nonzero term per output).
    prep = keras.layers.Conv2D(3, 1, name="vgg19_preprocess", dtype="float32", trainable=False)
    inp = keras.Input((s["image_size"], s["image_size"], 3), name="image")
    x = base(prep(inp))
    if len(x.shape) > 2:
        x = keras.layers.Flatten(name="features")(x)
    out = head_as_keras(kind, run_info["head_file"])(x)
    model = keras.Model(inp, out, name=f"vgg19_{s['layer']}_{kind}")
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


def main(args):
    info = read_run(args.run)
    missing = [p for p in args.images if not os.path.isfile(p)]
    if missing:
        raise PipelineError(f"image {missing[0]}: no such file; pass existing image files")
    model = end_to_end(info)
    names = info["metrics"]["class_names"]
    for path, k, proba in predict_images(model, info, args.images, args.batch_size):
        print(f"{path}\t{names[k]}\t{proba[k]:.4f}")
    if args.export:
        if not args.export.endswith(".keras"):
            raise PipelineError(f"--export {args.export}: expected a path ending in .keras")
        model.save(args.export)
        print(f"exported {args.export}: input {model.input.shape[1]}x{model.input.shape[2]} RGB 0..255 upscaled "
              f"with OpenCV {info['settings']['interpolation']}", file=sys.stderr)
